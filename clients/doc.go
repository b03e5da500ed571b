// Package clients reads named clients from a JSON file (CLIENTS_FILE): who
// may send events to the proxy with which token, to which datasources, and
// how many.
//
// The file holds one JSON object with one key, "clients", a list of client
// objects:
//
//	{"clients": [
//	  {"name": "api-worker",
//	   "token_sha256": "62593723d55b5361daf21898eca95aeeff14edfa35b5b44f2c10499c123eaf5e",
//	   "datasources": ["api_requests", "audit_*"],
//	   "events_per_minute": 60000, "events_per_day": 50000000},
//	  {"name": "web",
//	   "token_sha256": "ae63ade65172d4e6a1edb97e8e646a050512638c452499e7211fa87ad0dd1e29",
//	   "datasources": ["page_views"]}
//	]}
//
// The file never holds a token, only its digest: `tbproxy hash-token` prints
// the digest of a token read from its argument or from standard input.
//
// Each client object has these fields, and no others:
//
//   - name (required): 1 to 64 characters of a-z, 0-9, '_', '.' and '-',
//     starting with a letter or a digit; unique in the file. It is the
//     client's label in metrics and logs.
//   - token_sha256 (required): the SHA-256 of the client's token, as exactly
//     64 hex digits (upper case is accepted); unique in the file, and not the
//     digest of the empty token.
//   - datasources (optional): the datasources the client may write to, each
//     a datasource name (as buffer.ValidDatasource accepts), or such a name
//     followed by one '*' to allow every datasource starting with it
//     ("audit_*" allows "audit_" and "audit_logins"), or "*" alone for any
//     datasource. '*' is allowed nowhere else. Omitted or null: any
//     datasource. An empty list is refused, because it would read as "none".
//   - events_per_minute, events_per_day (optional): limits on the events the
//     client may send, as whole numbers written without a fraction or an
//     exponent, at least 0. Omitted, null or 0: no limit.
//
// Keys are matched exactly (lower case) and may appear once per object, so a
// second "datasources" cannot silently widen the first. An empty list,
// {"clients": []}, is valid and names no clients; a file without the
// "clients" key, or with "clients": null, is refused as a likely mistake.
// Nothing may follow the object but white space. The file may be at most
// MaxFileSize bytes (1 MiB) and name at most MaxClients clients (10,000).
//
// Parse and Load refuse a file with any error. They report the errors found
// (the first 20, then a count), one per line, each naming the client by its
// index in the list and, if valid, its name, and the field:
// `clients[1] ("web"): token_sha256: ...`.
// No message repeats a token_sha256 value: a mistaken file may hold a token
// pasted where its digest belongs.
package clients
