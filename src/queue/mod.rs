//! NFQUEUE consumer layer on `mnl`: bind, receive in batches, verdicts with payloads.
//!
//! API CONTRACT (the daemon is written against it): see the helper's implementation.

// TEMPORARY stubs so main builds until the queue branch lands.
pub struct Queue;
#[derive(Default)]
pub struct QueueOptions {
    pub num: u16,
}
pub enum Verdict {
    Accept,
    Drop,
}
pub struct Decision {
    pub verdict: Verdict,
    pub modified: bool,
    pub mark: Option<u32>,
}
pub struct Packet<'a> {
    pub id: u32,
    pub hook: u8,
    pub indev: u32,
    pub outdev: u32,
    pub mark: u32,
    pub checksum_ready: bool,
    pub truncated: bool,
    pub payload: &'a mut [u8],
}
impl Queue {
    pub fn open(o: &QueueOptions) -> Result<Queue, std::io::Error> {
        let _ = o;
        todo!()
    }
    pub fn process_batch(
        &mut self,
        h: &mut dyn FnMut(&mut Packet<'_>) -> Decision,
    ) -> Result<usize, std::io::Error> {
        let _ = h;
        todo!()
    }
    pub fn wait(&self, t: std::time::Duration) -> Result<bool, std::io::Error> {
        let _ = t;
        todo!()
    }
}
impl std::os::fd::AsRawFd for Queue {
    fn as_raw_fd(&self) -> i32 {
        todo!()
    }
}
