import type { FastifyInstance } from 'fastify';
import type { Authenticator } from '../../auth/tokens.js';
import { eventView, EVENT_TYPES, type Outbox } from '../../db/events.js';
import { requireScope } from '../auth.js';
import { AUTH_ERRORS, errorResponses } from '../schemas.js';

export interface EventRouteDeps {
  auth: Authenticator;
  outbox: Outbox;
}

const MAX_LIMIT = 1000;

const eventSchema = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    type: { type: 'string', enum: [...EVENT_TYPES] },
    at: { type: 'string', format: 'date-time' },
    sha512: { type: 'string' },
    size: { type: ['integer', 'null'] },
    names: { type: 'array', items: { type: 'string' } },
    previousSha512: { type: 'string', description: 'name.repointed: the hash the name served before' },
    actor: { type: ['string', 'null'], description: 'token name, cli:<user>, scrub, import, pull-through' },
  },
  required: ['id', 'type', 'at', 'sha512', 'size', 'names', 'actor'],
} as const;

/** GET /api/v1/events?after=ID&limit=N: the outbox as a pollable stream (the same events webhooks receive). */
export async function eventRoutes(app: FastifyInstance, deps: EventRouteDeps): Promise<void> {
  app.get<{ Querystring: { after: number; limit: number } }>(
    '/events',
    {
      onRequest: [
        async (request) => {
          request.routeKind = 'api';
        },
        requireScope(deps.auth, 'read-api'),
      ],
      schema: {
        summary: 'Events after an id, oldest first (poll with after = the last id you saw)',
        tags: ['events'],
        querystring: {
          type: 'object',
          properties: {
            after: { type: 'integer', minimum: 0, default: 0 },
            limit: { type: 'integer', minimum: 1, maximum: MAX_LIMIT, default: 100 },
          },
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: {
              events: { type: 'array', items: eventSchema },
              lastId: { type: 'integer', description: 'pass as after= next time' },
            },
            required: ['events', 'lastId'],
          },
          ...errorResponses('BAD_REQUEST', ...AUTH_ERRORS),
        },
      },
    },
    async (request, reply) => {
      const { after, limit } = request.query;
      const events = (await deps.outbox.after(after, limit)).map(eventView);
      reply.header('cache-control', 'no-store');
      return { events, lastId: events.length > 0 ? events[events.length - 1]!.id : after };
    },
  );
}
