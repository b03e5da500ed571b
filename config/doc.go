// Package config turns environment variables into a validated [Config].
//
// [Load] reads every variable with github.com/caarlos0/env, applies the
// documented defaults and checks each value, reporting all problems at once.
// Every error message starts with the name of the variable at fault, such as
// `FLUSH_INTERVAL: invalid duration "abc"`, and never contains the value of
// TINYBIRD_TOKEN, AUTHORIZATION_TOKEN or CLICKHOUSE_PASSWORD (nor a password
// written in TINYBIRD_BASE_URL).
//
// The proxy runs in one of two modes. With TINYBIRD_TOKEN set (proxy-token
// mode) it authenticates clients against AUTHORIZATION_TOKEN and sends its own
// token upstream. Without it (pass-through mode) each client's own token goes
// upstream unchanged. A TINYBIRD_BASE_URL of the form file://<dir> replaces
// the upstream with a directory of files, for local development and tests.
// One of the form clickhouse://… inserts into a ClickHouse server instead
// (see [Config.ClickHouse]); clients then authenticate as in proxy-token mode.
// [Config.Upstream] is the one answer to which of the three is configured.
//
// Only package main imports config; every other package takes its own
// Options struct, which main fills from a Config.
package config
