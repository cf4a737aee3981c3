//! End-to-end data-path tests of netnat: a real client reaches the actual server through the
//! apparent endpoint that `netnat run` maps on the router, over IPv4 and IPv6, TCP and UDP,
//! for a fixed apparent address and for `*`. The same scenarios run with the kernel's own
//! `dnat` in tests/datapath_reference.rs: that is what the right result looks like.
//!
//! Needs root and: iproute2 nftables curl socat tcpdump tshark ethtool python3.

mod common;

use common::scenario::{
    AppAddr, Case, Translator, scenario_bad_config, scenario_bulk, scenario_capture,
    scenario_endpoints, scenario_firewall, scenario_ruleset_untouched, scenario_same_as_dnat,
    scenario_second_instance, scenario_signal_cleanup,
};
use common::{Family, matrix};

const TR: Translator = Translator::Netnat;

// HTTP (curl) and UDP request/response: the server sees the real client, the client sees only
// the apparent endpoint.
matrix! { TR, scenario_endpoints:
    netnat_endpoints_v4_fixed => V4, Fixed;
    netnat_endpoints_v4_star => V4, Star;
    netnat_endpoints_v6_fixed => V6, Fixed;
    netnat_endpoints_v6_star => V6, Star;
}

// Captures on pub0 and priv0 with TX checksum offload off on every veth end: only apparent
// addresses on pub0, only actual ones on priv0, the same connections, no bad checksum.
matrix! { TR, scenario_capture:
    netnat_capture_v4_fixed => V4, Fixed;
    netnat_capture_v4_star => V4, Star;
    netnat_capture_v6_fixed => V6, Fixed;
    netnat_capture_v6_star => V6, Star;
}

// Behind the router's default-drop firewall: blocked without the documented mark rule, flowing
// with it.
matrix! { TR, scenario_firewall:
    netnat_firewall_mark_rule_v4_fixed => V4, Fixed;
    netnat_firewall_mark_rule_v4_star => V4, Star;
    netnat_firewall_mark_rule_v6_fixed => V6, Fixed;
    netnat_firewall_mark_rule_v6_star => V6, Star;
}

macro_rules! bulk {
    ($($name:ident => $fam:ident, $app:ident, $offload:expr;)*) => {
        $(
            /// 50 MiB each way, identical sha256.
            #[test]
            #[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
            fn $name() {
                let case = Case::new(TR, Family::$fam, AppAddr::$app);
                scenario_bulk(stringify!($name), case, $offload);
            }
        )*
    };
}

bulk! {
    netnat_bulk_50mib_v4_fixed => V4, Fixed, true;
    netnat_bulk_50mib_v4_star => V4, Star, true;
    netnat_bulk_50mib_v6_fixed => V6, Fixed, true;
    netnat_bulk_50mib_v6_star => V6, Star, true;
    netnat_bulk_50mib_offload_off_v4_fixed => V4, Fixed, false;
    netnat_bulk_50mib_offload_off_v6_fixed => V6, Fixed, false;
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_leaves_the_rest_of_the_ruleset_alone_v4() {
    let name = "netnat_leaves_the_rest_of_the_ruleset_alone_v4";
    scenario_ruleset_untouched(name, Case::new(TR, Family::V4, AppAddr::Fixed));
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_leaves_the_rest_of_the_ruleset_alone_v6_star() {
    let name = "netnat_leaves_the_rest_of_the_ruleset_alone_v6_star";
    scenario_ruleset_untouched(name, Case::new(TR, Family::V6, AppAddr::Star));
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_sigterm_removes_table_exit_0() {
    let name = "netnat_sigterm_removes_table_exit_0";
    scenario_signal_cleanup(
        name,
        Case::new(TR, Family::V4, AppAddr::Fixed),
        libc::SIGTERM,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_sigkill_table_gone_owner_flag() {
    let name = "netnat_sigkill_table_gone_owner_flag";
    scenario_signal_cleanup(
        name,
        Case::new(TR, Family::V6, AppAddr::Star),
        libc::SIGKILL,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_bad_config_refused_installs_nothing() {
    scenario_bad_config("netnat_bad_config_refused_installs_nothing");
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_second_instance_refused_first_unharmed() {
    let name = "netnat_second_instance_refused_first_unharmed";
    scenario_second_instance(name, Case::new(TR, Family::V4, AppAddr::Fixed));
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_observes_like_kernel_dnat_v4_fixed() {
    let name = "netnat_observes_like_kernel_dnat_v4_fixed";
    scenario_same_as_dnat(name, Family::V4, AppAddr::Fixed);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn netnat_observes_like_kernel_dnat_v6_star() {
    let name = "netnat_observes_like_kernel_dnat_v6_star";
    scenario_same_as_dnat(name, Family::V6, AppAddr::Star);
}
