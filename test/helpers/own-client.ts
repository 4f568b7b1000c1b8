import { Agent, getGlobalDispatcher, setGlobalDispatcher, type Dispatcher } from 'undici';

/**
 * Gives a test file its own keep-alive pool, closed before the server stops.
 *
 * Client and server share one event loop here: a download can be fully read by the client before the server
 * has marked its socket idle, and Node's server.close() only drops the sockets that are idle at that instant,
 * leaving the other one to the 72 s keep-alive timeout. Closing the client side first removes that race.
 */
export function ownClient(): { install(): void; release(): Promise<void> } {
  let previous: Dispatcher | undefined;
  let agent: Agent | undefined;
  return {
    install() {
      previous = getGlobalDispatcher();
      agent = new Agent();
      setGlobalDispatcher(agent);
    },
    async release() {
      if (previous) setGlobalDispatcher(previous);
      await agent?.close();
    },
  };
}
