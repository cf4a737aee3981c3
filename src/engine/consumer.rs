//! The queue threads: one per bound queue, each receiving, deciding and returning verdicts for
//! its own queue, all sharing one [`Shared`] with the daemon's main thread.
//!
//! Why this shape: the rules spread packets over the queues by the CPU that handles them
//! (`fanout`), so with one thread per queue each CPU's packets are handled by their own thread
//! and the expensive parts, the two system calls that copy packets out of and back into the
//! kernel, run in parallel. The shared part (lookup table, counters, flow memory, log) is
//! locked once per batch and only while the packets are decided, never across a system call.
//!
//! After a batch a thread keeps looking for the next one for a short while (`busy-poll`) before
//! it sleeps in `poll`: a request/response exchange brings its next packet within tens of
//! microseconds, and catching it awake saves the wake-up of a sleeping thread (the larger part
//! of netnat's added latency on a virtual machine). An idle queue costs nothing: the thread
//! only spins right after it had work.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::datapath;
use crate::engine::monitor::{Clock, Monitor};
use crate::engine::service::{FlowMemory, ServiceTable};
use crate::log::Logger;
use crate::queue::{Queue, QueueStats};

/// Batches handled before the thread looks at the stop flag again.
const BATCHES_PER_ROUND: usize = 64;

/// What the queue threads and the main thread share.
pub struct Shared {
    /// The lookup table the packets are decided by; swapped whole on reload.
    pub table: Arc<ServiceTable>,
    /// Which address the flows of `*` services keep; outlives table swaps.
    pub flows: FlowMemory,
    /// Mark bits for translated inbound packets.
    pub mark: u32,
    pub monitor: Monitor,
    pub log: Logger,
    /// Each queue's counters, as of its thread's last idle moment (index = queue − first).
    pub queue_stats: Vec<QueueStats>,
}

/// Locks `shared`. A thread that panicked while holding the lock leaves consistent counters
/// (they are plain increments), so poisoning is ignored; the daemon stops on a dead thread.
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queue thread's part.
pub struct Consumer {
    pub queue: Queue,
    /// Index of the queue among the daemon's queues.
    pub index: usize,
    pub shared: Arc<Mutex<Shared>>,
    pub started: Instant,
    /// Set by the main thread when the table is gone: drain what is queued, then return.
    pub stop: Arc<AtomicBool>,
    /// Readable (hung up) once the main thread wants the threads to look at `stop`.
    pub wake: RawFd,
    /// `busy-poll`: how long to keep polling after work, in µs (0: sleep at once). Shared
    /// with the main thread, which changes it on reload.
    pub busy_poll_us: Arc<AtomicU32>,
}

impl Consumer {
    /// The thread's body: until stopped, wait for packets and handle them.
    pub fn run(mut self) {
        // Whatever arrived while the bind was acknowledged waits in the queue's stash, which
        // poll cannot see.
        self.drain(BATCHES_PER_ROUND);
        while !self.stop.load(Ordering::Relaxed) {
            // An error here (EINTR aside, none is expected) shows in the next receive.
            if !self
                .queue
                .wait_or(self.wake, Duration::from_secs(1))
                .unwrap_or(true)
            {
                continue;
            }
            if self.drain(BATCHES_PER_ROUND) > 0 {
                self.spin();
            }
        }
        // Packets queued before the table went away still get their verdicts.
        for _ in 0..100 {
            if !self.queue.wait(Duration::from_millis(20)).unwrap_or(false) {
                break;
            }
            self.drain(1000);
        }
        self.publish_stats();
    }

    /// Polls the queue without sleeping until `busy-poll` passes with nothing new.
    fn spin(&mut self) {
        let us = self.busy_poll_us.load(Ordering::Relaxed);
        if us == 0 {
            return;
        }
        let budget = Duration::from_micros(u64::from(us));
        let mut since = Instant::now();
        while since.elapsed() < budget && !self.stop.load(Ordering::Relaxed) {
            if self.drain(BATCHES_PER_ROUND) > 0 {
                since = Instant::now();
            } else {
                // Polite polling: a runnable task on this CPU (a sender, a server, the other
                // end of the exchange) goes first; the poll only uses time nobody wants.
                std::thread::yield_now();
            }
        }
    }

    /// Handles every packet waiting now, batch by batch, at most `max_batches`. Returns the
    /// number of packets handled.
    fn drain(&mut self, max_batches: usize) -> usize {
        let mut handled = 0;
        for _ in 0..max_batches {
            match self.queue.receive_batch() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    lock(&self.shared).log.error(format_args!("queue: {e}"));
                    break;
                }
            }
            // The clocks are read once per batch, not per packet.
            let now = Clock {
                ms: self.started.elapsed().as_millis() as u64,
                wall: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |t| t.as_secs()),
            };
            {
                let mut guard = lock(&self.shared);
                let Shared {
                    table,
                    flows,
                    mark,
                    monitor,
                    log,
                    ..
                } = &mut *guard;
                flows.set_now(now.ms);
                handled += self.queue.decide(&mut |pkt| {
                    let (decision, event) = datapath::handle(table, flows, *mark, pkt);
                    monitor.observe(event, pkt, now, log);
                    decision
                });
            }
            if let Err(e) = self.queue.send_verdicts() {
                lock(&self.shared).log.error(format_args!("queue: {e}"));
                break;
            }
        }
        if handled > 0 {
            self.publish_stats();
        }
        handled
    }

    fn publish_stats(&self) {
        if let Some(s) = lock(&self.shared).queue_stats.get_mut(self.index) {
            *s = self.queue.stats();
        }
    }
}
