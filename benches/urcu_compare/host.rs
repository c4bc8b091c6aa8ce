//! The host's cross-core line-transfer time around each retire round pair, and the retire
//! rows' updater-CPU ratio split by it.
//!
//! A retire with a reader moves cache lines between three threads on every retire, and on
//! the 2-vCPU guests this bench runs on a line transfer takes about 30 ns at times and about
//! 160-190 ns at others (`tramway_harness::bench::line_transfer`). The two sides of a round
//! pair run back to back, so they mostly see the same state, but a run's median mixes pairs
//! of both. Here every retire round pair is bracketed by two measurements: a pair whose two
//! agree (both below [`FAST_BELOW_NS`], or both at or above it) is counted in that state, one
//! whose two disagree is mixed, and one a probe gave up on is unknown; the ratio of each
//! pair (tramway's updater CPU per retire over liburcu's) is then summarized per state.

use tramway_harness::bench::line_transfer::cross_core_transfer_ns;

use super::*;

/// A transfer below this is the fast state, at or above it the slow one (the two states
/// measured on the project's hosts are about 30 and 160-190 ns).
pub(super) const FAST_BELOW_NS: f64 = 80.0;

/// The transfer times measured before and after one round pair (`None`: the probe gave up).
#[derive(Clone, Copy)]
pub(super) struct PairTransfers {
    before: Option<f64>,
    after: Option<f64>,
}

/// The host's state around one round pair, as its two measurements say.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HostState {
    /// Both below [`FAST_BELOW_NS`].
    Fast,
    /// Both at or above it.
    Slow,
    /// One below, one at or above: the state changed during the pair.
    Mixed,
    /// A probe gave up (module docs of `tramway_harness::bench::line_transfer`).
    Unknown,
}

impl PairTransfers {
    fn state(&self) -> HostState {
        match (self.before, self.after) {
            (Some(a), Some(b)) => match (a < FAST_BELOW_NS, b < FAST_BELOW_NS) {
                (true, true) => HostState::Fast,
                (false, false) => HostState::Slow,
                _ => HostState::Mixed,
            },
            _ => HostState::Unknown,
        }
    }
}

/// [`interleave`], with the transfer time measured before the first round and after every
/// second call of `round` (the end of a round pair, whichever side ran second).
pub(super) fn interleave_with_transfers<T>(
    opts: &Opts,
    mut round: impl FnMut(Which, usize) -> T,
) -> (Vec<T>, Vec<T>, Vec<PairTransfers>) {
    let mut transfers = Vec::with_capacity(opts.rounds);
    let mut before = cross_core_transfer_ns();
    let mut calls = 0usize;
    let (a, b) = interleave(opts, |side, r| {
        let value = round(side, r);
        calls += 1;
        if calls % 2 == 0 {
            let after = cross_core_transfer_ns();
            transfers.push(PairTransfers { before, after });
            before = after;
        }
        value
    });
    (a, b, transfers)
}

/// One retire scenario's per-pair updater-CPU ratios and their transfer states.
pub(super) struct RetireStates {
    /// Which retire scenario (its reader, as the rows name it).
    pub(super) label: String,
    /// Per round pair: tramway's updater CPU per retire over liburcu's.
    pub(super) ratios: Vec<f64>,
    /// Per round pair: the transfer times around it.
    pub(super) transfers: Vec<PairTransfers>,
}

/// Appends the per-state summary of every retire scenario to `out`.
pub(super) fn write_retire_states(out: &mut String, states: &[RetireStates]) {
    if states.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nUpdater CPU per retire, tramway / liburcu, by the host's cross-core line-transfer \
         time measured before and after each round pair (fast: both below {FAST_BELOW_NS:.0} \
         ns; slow: both at or above; mixed: one of each; unknown: a probe gave up; see \
         benches/urcu_compare/host.rs):\n"
    );
    let _ = writeln!(
        out,
        "| scenario | fast pairs | slow pairs | mixed pairs | unknown |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for s in states {
        let cell = |want: HostState| -> String {
            let pairs: Vec<_> = (s.ratios.iter().zip(&s.transfers))
                .filter(|(_, t)| t.state() == want)
                .collect();
            if pairs.is_empty() {
                return "none".into();
            }
            let times = pairs
                .iter()
                .flat_map(|(_, t)| [t.before, t.after])
                .flatten();
            let range = times
                .fold(None, |range: Option<(f64, f64)>, ns| {
                    Some(range.map_or((ns, ns), |(lo, hi)| (lo.min(ns), hi.max(ns))))
                })
                .map_or(String::new(), |(lo, hi)| format!(", {lo:.0}-{hi:.0} ns"));
            let mut ratios: Vec<f64> = pairs.iter().map(|(r, _)| **r).collect();
            format!(
                "{:.2}x ({} pairs{range})",
                median(&mut ratios),
                ratios.len()
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            s.label,
            cell(HostState::Fast),
            cell(HostState::Slow),
            cell(HostState::Mixed),
            cell(HostState::Unknown)
        );
    }
}
