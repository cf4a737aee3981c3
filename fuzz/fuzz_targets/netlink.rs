//! Bytes as the kernel might send them on netnat's two listening netlink sockets: NFQUEUE
//! datagrams (queue layer) and rtnetlink link/address notifications (interface watcher). Both
//! decoders must reject anything malformed without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in netnat::queue::msg::parse_datagram(data) {
        let _ = m;
    }
    for m in netnat::iface::msg::messages(data) {
        let _ = m;
    }
});
