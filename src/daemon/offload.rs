//! The daemon's side of flow offload: reading back what the kernel counted for the packets it
//! rewrote without the consumer, and adding it to the services' counters.
//!
//! The counter sets (`nft::offload`) hold one element per service endpoint and direction,
//! each with a counter; this module reads them every [`offload::READ_INTERVAL_MS`] and before
//! every report, turns each element's growth since the last reading into packets and bytes of
//! the service the key names (the same lookups the consumer makes: `ServiceTable::inbound`
//! by interface, protocol and apparent endpoint, `ServiceTable::reply` by interface,
//! protocol and actual endpoint), and hands them to the [`Hub`], which adds them to every sum
//! it gives (status, metrics, volume records). Growth of a key that names no service any
//! more (it was deleted since) counts only in the totals.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::Protocol;
use crate::engine::consumer::Hub;
use crate::engine::service::ServiceTable;
use crate::nft::dump::{CounterDeltas, count_elements, decode_count_key, set_elements};
use crate::nft::offload::{self, WAYS};
use crate::nft::{Family, NftError, TABLE_NAME};

/// What the daemon knows of the kernel's offload work.
pub(super) struct KernelCounts {
    deltas: CounterDeltas,
    /// Packets and bytes the kernel rewrote without the consumer, since the start.
    pub packets: u64,
    pub bytes: u64,
    /// Flows in the flow sets at the last reading that counted them.
    pub flows: usize,
    /// `offload-flows`: the bound of each flow set.
    pub flows_limit: u32,
    next: Instant,
}

impl KernelCounts {
    pub(super) fn new(flows_limit: u32) -> KernelCounts {
        KernelCounts {
            deltas: CounterDeltas::new(),
            packets: 0,
            bytes: 0,
            flows: 0,
            flows_limit,
            next: Instant::now(),
        }
    }

    /// Whether the periodic reading is due.
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Reads the counter sets and adds their growth to `hub` by the services of `table`;
    /// with `flows`, also counts the flows in the flow sets (a dump of up to four times
    /// `offload-flows` elements: for reports, not for the periodic reading).
    pub(super) fn read(
        &mut self,
        table: &ServiceTable,
        hub: &mut Hub,
        now_unix: u64,
        flows: bool,
    ) -> Result<(), NftError> {
        self.next = Instant::now() + Duration::from_millis(offload::READ_INTERVAL_MS);
        for way in WAYS {
            let name = way.count_name();
            let elements = set_elements(TABLE_NAME, name)?;
            for (key, packets, bytes) in self.deltas.observe(name, &elements) {
                self.packets += packets;
                self.bytes += bytes;
                let v6 = way.family == Family::Ipv6;
                let Some((ifindex, addr, proto, port)) = decode_count_key(v6, &key) else {
                    continue;
                };
                let Some(protocol) = Protocol::from_number(proto) else {
                    continue;
                };
                let endpoint = SocketAddr::new(addr, port);
                let entry = if way.inbound {
                    table.inbound(ifindex, protocol, endpoint)
                } else {
                    table.reply(ifindex, protocol, endpoint)
                };
                if let Some(e) = entry {
                    hub.add_kernel(e.id, way.inbound, (packets, bytes), now_unix);
                }
            }
        }
        if flows {
            let mut n = 0;
            for way in WAYS {
                n += count_elements(TABLE_NAME, way.flows_name())?;
            }
            self.flows = n;
        }
        Ok(())
    }
}
