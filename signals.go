package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// handleSignals returns a context that ends, with the signal as its cause,
// on the first SIGTERM, SIGINT or SIGQUIT: each starts the graceful
// shutdown (Go's default would exit at once, and for SIGQUIT dump stacks,
// losing the buffer). Later ones are logged and ignored: the drain is
// already bounded by SHUTDOWN_TIMEOUT, and SIGKILL remains for the
// impatient. SIGHUP calls hup, which reloads CLIENTS_FILE (nil: logged
// and ignored, as terminals and some supervisors send it); SIGUSR1 and
// SIGUSR2 are logged and ignored: none of them may end the process without
// a drain. stop undoes it all.
func handleSignals(log *slog.Logger, hup func()) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				switch {
				case s == syscall.SIGHUP && hup != nil:
					hup()
				case s == syscall.SIGHUP || s == syscall.SIGUSR1 || s == syscall.SIGUSR2:
					log.Warn("signal ignored: nothing to reload; send SIGTERM to shut down", "signal", s.String())
				case ctx.Err() != nil:
					log.Warn("signal ignored: already shutting down, within SHUTDOWN_TIMEOUT", "signal", s.String())
				default:
					cancel(errors.New(s.String()))
				}
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}
