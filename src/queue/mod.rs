//! NFQUEUE consumer layer on `mnl`: bind, receive in batches, verdicts with payloads.
//!
//! API CONTRACT (the daemon is written against it): see the helper's implementation.
