// ingest sends one event to the Events API with an Idempotency-Key, and
// retries it until it is stored: tbproxy stores a request at most once per
// key within IDEMPOTENCY_WINDOW, so a retry after a timeout or a 503 never
// stores the event twice (docs/clients.md). zod-bird cannot set a header
// per request, so this uses fetch itself. Tinybird ignores the header: use
// it where TINYBIRD_URL points at tbproxy.
//
// key must be unique to the event and the same on every retry of it (the
// event's own id is ideal). The result is the proxy's JSON answer and
// whether it was a replay of an earlier attempt's.
export async function ingest(env, datasource, event, key, { attempts = 5, fetchImpl = fetch } = {}) {
  const url = new URL("/v0/events", env.TINYBIRD_URL);
  url.searchParams.set("name", datasource);
  let last = "";
  for (let attempt = 0; attempt < attempts; attempt++) {
    let res;
    try {
      res = await fetchImpl(url, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${env.TINYBIRD_TOKEN}`,
          "Content-Type": "application/x-ndjson",
          "Idempotency-Key": key, // the same key on every retry of this event
        },
        body: JSON.stringify(event),
      });
    } catch (err) {
      last = err.message; // the network: retry with the same key
      await sleep(2 ** attempt * 100);
      continue;
    }
    if (res.ok) {
      return { ...(await res.json()), replayed: res.headers.get("Idempotent-Replayed") === "true" };
    }
    last = `${res.status} ${await res.text()}`;
    // 429 (limits, full buffer), 409 (this key still in flight), 5xx: retry.
    if (res.status !== 429 && res.status !== 409 && res.status < 500) {
      throw new Error(`ingest: ${last}`);
    }
    await sleep(Number(res.headers.get("Retry-After") ?? 1) * 1000);
  }
  throw new Error(`ingest: gave up after ${attempts} attempts: ${last}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
