/**
 * Who downloads a missed key when several processes (cluster workers, later replicas) miss it at
 * once. Within one process PullThrough already shares one download per key; this lock extends
 * that across processes: exactly one process becomes the owner and fetches, the others wait for
 * its outcome and then serve from the shared store.
 */
export interface FlightLock {
  acquire(key: string): Promise<FlightGrant>;
}

export type FlightGrant =
  /** This process downloads; `release` tells the waiting processes whether the blob is now stored. */
  | { owner: true; release(stored: boolean): void }
  /** Another process downloads; settles true once the blob is stored, false if its pull failed. */
  | { owner: false; outcome: Promise<boolean> };

/** A single process is always the owner: its in-process single flight is the whole story. */
export const processLocalFlightLock: FlightLock = {
  acquire: () => Promise.resolve({ owner: true, release: () => undefined }),
};
