// A Cloudflare Worker that serves a tiny JSON API and logs every request it
// serves as one event in the Tinybird datasource `api_requests`, through
// zod-bird (a Tinybird client from npm). The event is sent inside
// ctx.waitUntil, after the response is on its way, so logging never slows
// the API down.
//
// Its only settings are TINYBIRD_URL (a var in wrangler.toml) and
// TINYBIRD_TOKEN (a secret). Pointing TINYBIRD_URL at a tbproxy instead of
// Tinybird turns one HTTP request per event into large batches; nothing in
// this file changes.

import { Tinybird } from "@chronark/zod-bird";
import { z } from "zod";

// One row of `api_requests`. zod-bird validates each event against this
// schema and sends what it parsed, one JSON object per line.
const apiRequest = z.object({
  id: z.string(),
  timestamp: z.string(),
  method: z.string(),
  path: z.string(),
  status: z.number().int(),
  duration_ms: z.number(),
  user_agent: z.string().nullable(),
  country: z.string().nullable(),
  city: z.string().nullable(),
  colo: z.string().nullable(),
});

export default {
  async fetch(request, env, ctx) {
    const started = Date.now();
    const id = crypto.randomUUID();
    const response = await handle(request);
    response.headers.set("X-Request-Id", id);

    const tinybird = new Tinybird({ baseUrl: env.TINYBIRD_URL, token: env.TINYBIRD_TOKEN });
    const logRequest = tinybird.buildIngestEndpoint({ datasource: "api_requests", event: apiRequest });
    ctx.waitUntil(
      logRequest({
        id,
        timestamp: new Date(started).toISOString(),
        method: request.method,
        path: new URL(request.url).pathname,
        status: response.status,
        duration_ms: Date.now() - started,
        user_agent: request.headers.get("User-Agent"),
        country: request.cf?.country ?? null,
        city: request.cf?.city ?? null,
        colo: request.cf?.colo ?? null,
      }).catch((err) => console.error(`api_requests: event ${id} not logged: ${err.message}`)),
    );
    return response;
  },
};

// The API itself: GET /api/hello?name=... answers a greeting.
async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === "/api/hello" && request.method === "GET") {
    const name = url.searchParams.get("name") ?? "world";
    return Response.json({ hello: name });
  }
  return Response.json({ error: "not found" }, { status: 404 });
}
