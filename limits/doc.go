// Package limits counts events per identity (a named client, or a hashed
// Tinybird token) against two limits, and shares the counts between
// replicas that each run a Limiter.
//
// # Layers
//
// A Limit has two layers, in events (not requests); either may be off:
//
//   - PerMinute, a burst limit: a sliding-window counter. Windows are Unix
//     minutes, and the estimate of the last minute's events at elapsed e
//     into the current window is prev×(1 − e/60s) + cur, where prev and
//     cur are the previous and current windows' counts. It is computed in
//     integer nanoseconds with 128-bit products, exactly.
//   - PerDay, a quota: a fixed window, the UTC calendar day.
//
// A request of n events is admitted all or none: the minute estimate + n
// and the day's count + n must both be within their limits. Admission
// counts n in both; Refund gives them back (the store refused a request
// after the Limiter admitted it). A refused request's RetryAfter is the
// exact earliest wait after which it passes both layers if nothing else
// is admitted: the estimate falls continuously and linearly within a
// minute, so that moment is solved for, not searched (see minuteWait).
//
// Each identity has its own small mutex; a sharded table of RWMutex-guarded
// maps finds it, so two identities never wait for each other, and Take on
// an identity already tracked allocates nothing. The table holds at most
// Options.MaxKeys identities, evicting those whose windows hold nothing.
//
// Keys are arbitrary strings (a SHA-256 digest's raw bytes, say). This
// package never logs them, and its errors never contain one.
//
// # Sharing across replicas
//
// Replicas behind one load balancer share a NATS server. Every interval I
// (50 ms, say) each one publishes AppendReport's output on a core NATS
// subject: the events it admitted, minus refunds, per identity and window
// since its previous report. Every replica Merges the others' reports into
// remote counts, which take part in each decision beside its own, exact,
// local counts. A decision therefore misses only the events other replicas
// admitted after the start of their latest report that has been merged
// here.
//
// Documented tolerance. Let d be the longest transit time of a report,
// from the start of AppendReport on its replica to the end of Merge on
// another (publish, delivery and the Merge itself). A report not yet
// merged was started less than I + d ago, so at every admission the
// count over all replicas (the day's count, or the minute estimate)
// exceeds the limit by at most the events the other replicas admitted
// for that identity during the last I + d. In words: each other replica
// can over-admit by what it admitted during one report interval plus the
// message transit time. With two replicas, the total admitted in a window
// is at most the limit plus what the replica that stopped admitting first
// admitted during the last I + d before the other's final admission;
// with R replicas, the limit plus the sum of that over the R − 1 others.
// At I = 50 ms and d = 1 ms, a replica admitting 20,000 events/s for one
// identity can add up to 1,020 events.
//
// The tolerance holds for replicas whose reports all arrive and whose
// clocks agree. Beyond it:
//
//   - A lost report (core NATS delivers at most once: a disconnect, a slow
//     consumer, a failed publish) is never sent again: its events stay
//     uncounted by the receivers for the rest of their windows.
//   - A replica that starts knows nothing of what others admitted before
//     its first merged report of a window: up to two minutes for the
//     minute layer and until UTC midnight for the day layer.
//   - Windows follow each replica's own clock: a report for a minute or
//     day the receiver has not reached yet (its clock is behind) is
//     ignored, so skew s under-counts what a replica admits within s of a
//     boundary. Keep clocks synchronised (NTP).
//   - A refund after a report is not reported (reports carry no negative
//     counts): the others keep counting those events, which only refuses
//     more, until the refunding replica has admitted as many again.
//   - An identity from a report that finds the table full is skipped
//     (Stats.MergeSkipped).
package limits
