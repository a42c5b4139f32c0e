//! The newer checks' rows on `synth::integrity`: what each reads, that a
//! planted item is its only finding, and that a live capture's artefacts
//! are not findings.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::tests::{s, with_kernel};
use crate::kernel::Kernel;
use crate::plugins::{Options, Row, run_plugin};
use crate::synth::integrity::Plant;

const OPTS: Options = Options { threads: false };

fn rows(k: &Kernel<'_, '_>, plugin: &str) -> Vec<Row> {
    run_plugin(plugin, k, &OPTS).unwrap()
}

#[test]
fn afinfo_and_tty_rows_name_their_code() {
    with_kernel(Plant::default(), None, |k| {
        let afinfo: Vec<(String, String)> = rows(k, "check_afinfo")
            .iter()
            .map(|r| (s(r, "member"), s(r, "symbol")))
            .collect();
        assert_eq!(afinfo.len(), 4);
        assert!(afinfo.contains(&("show".into(), "tcp4_seq_show".into())));
        let tty = rows(k, "tty_check");
        assert_eq!(tty.len(), 1);
        assert_eq!(s(&tty[0], "name"), "ttyS0");
        assert_eq!(s(&tty[0], "symbol"), "n_tty_receive_buf");
    });
}
