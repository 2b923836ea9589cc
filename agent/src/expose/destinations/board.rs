//! One owner's and direction's ranking table: candidates with their decayed scores, the members
//! among them with their series, the `other` series, and this drain's bytes until `flush`.

use std::collections::HashMap;

use super::HYSTERESIS;
use crate::vocab::{Peer, PeerKind, TrafficClass};

pub(super) type Target = (TrafficClass, Peer);

/// A series' totals. The series are encoded from here (a collector): no label set is stored
/// twice, and recording costs no hashing of labels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Totals {
    pub(super) bytes: u64,
    pub(super) dollars: f64,
}

impl Totals {
    pub(super) fn add(&mut self, bytes: u64, dollars: f64) {
        self.bytes += bytes;
        self.dollars += dollars;
    }
}

#[derive(Debug, Default)]
pub(super) struct Candidate {
    pub(super) score: f64,
    /// Bytes in the drain being ranked.
    pub(super) recent: u64,
    /// `Some`: a member, with its series.
    pub(super) series: Option<Totals>,
    /// Refused by the cap once already (counted once).
    pub(super) refused: bool,
}

#[derive(Debug, Default)]
pub(super) struct Board {
    pub(super) candidates: HashMap<Target, Candidate>,
    /// The `other` series, by class.
    pub(super) others: HashMap<TrafficClass, Totals>,
    /// This drain's bytes and dollars, ranked and recorded at `flush`.
    pub(super) pending: HashMap<Target, Totals>,
}

impl Board {
    pub(super) fn members(&self) -> usize {
        self.candidates
            .values()
            .filter(|c| c.series.is_some())
            .count()
    }

    /// The weakest member.
    pub(super) fn weakest_member(&self) -> Option<(Target, f64)> {
        self.candidates
            .iter()
            .filter(|(_, c)| c.series.is_some())
            .min_by(|x, y| x.1.score.total_cmp(&y.1.score).then_with(|| x.0.cmp(y.0)))
            .map(|(t, c)| (t.clone(), c.score))
    }

    /// Every series: members, then `other`.
    pub(super) fn series(&self) -> impl Iterator<Item = (TrafficClass, &Peer, Totals, f64)> {
        static OTHER: std::sync::LazyLock<Peer> = std::sync::LazyLock::new(Peer::other);
        let members = self
            .candidates
            .iter()
            .filter_map(|((class, peer), c)| Some((*class, peer, c.series?, c.score)));
        let others = self
            .others
            .iter()
            .map(|(class, t)| (*class, &*OTHER, *t, 0.0));
        members.chain(others)
    }
}

/// What a drain's ranking may do, and how many refusals it made.
pub(super) struct Limits {
    pub(super) top: usize,
    pub(super) capacity: usize,
    pub(super) max_series: usize,
    pub(super) refused: u64,
}

/// Scores this drain's bytes, heaviest first, so that within a drain a heavy talker is never
/// crowded out by many small ones (and the outcome does not depend on hash order). When the
/// table is full, a newcomer takes the place of the non-member that added least in this drain
/// (the weakest by score among equals), and only when it added more: a spray of small talkers
/// cannot push out a steady one, an idle candidate makes room, a new heavy talker gets in at once.
pub(super) fn rank(board: &mut Board, pending: &HashMap<Target, Totals>, capacity: usize) {
    let mut ranked: Vec<(&Target, u64)> = pending
        .iter()
        .filter(|(target, _)| target.1.kind != PeerKind::Other)
        .map(|(target, t)| (target, t.bytes))
        .collect();
    let heaviest_first =
        |a: &(&Target, u64), b: &(&Target, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
    for c in board.candidates.values_mut() {
        c.recent = 0;
    }
    // Usually the ranking stops long before the end (at the first newcomer that cannot get in),
    // and no more than the table's entries plus its capacity come before that: sort those
    // first, and the rest (hundreds per pod at every drain) only if the ranking gets there.
    // The order is the same as sorting everything.
    let head = (board.candidates.len() + capacity + 1).min(ranked.len());
    if head < ranked.len() {
        ranked.select_nth_unstable_by(head, heaviest_first);
    }
    ranked[..head].sort_by(heaviest_first);
    for i in 0..ranked.len() {
        if i == head {
            ranked[head..].sort_by(heaviest_first);
        }
        let (target, bytes) = ranked[i];
        if !take(board, target, bytes, capacity) {
            break;
        }
    }
}

/// One talker of this drain, in ranking order; false when it could not get in (and, sorted
/// heaviest first, no later newcomer can either).
fn take(board: &mut Board, target: &Target, bytes: u64, capacity: usize) -> bool {
    if let Some(c) = board.candidates.get_mut(target) {
        c.score += bytes as f64;
        c.recent += bytes;
        return true;
    }
    if board.candidates.len() >= capacity {
        let victim = board
            .candidates
            .iter()
            .filter(|(_, c)| c.series.is_none())
            .min_by(|x, y| {
                x.1.recent
                    .cmp(&y.1.recent)
                    .then(x.1.score.total_cmp(&y.1.score))
                    .then_with(|| x.0.cmp(y.0))
            })
            .map(|(t, c)| (t.clone(), c.recent));
        match victim {
            Some((t, recent)) if bytes > recent => {
                board.candidates.remove(&t);
            }
            _ => return false,
        }
    }
    board.candidates.insert(
        target.clone(),
        Candidate {
            score: bytes as f64,
            recent: bytes,
            ..Candidate::default()
        },
    );
    true
}

/// Admits the best candidates while there is room, and swaps in one that clearly outranks the
/// weakest member.
pub(super) fn rebalance(board: &mut Board, members_all: &mut usize, limits: &mut Limits) {
    loop {
        let best = board
            .candidates
            .iter()
            .filter(|(_, c)| c.series.is_none() && c.score > 0.0)
            .max_by(|x, y| x.1.score.total_cmp(&y.1.score).then_with(|| y.0.cmp(x.0)))
            .map(|(t, c)| (t.clone(), c.score));
        let Some((best, best_score)) = best else {
            return;
        };
        let members = board.members();
        if members >= limits.top {
            // A swap: the number of series stays the same. The member's series goes (its past
            // stays in Prometheus' history).
            match board.weakest_member() {
                Some((t, s)) if best_score > HYSTERESIS * s => {
                    if let Some(c) = board.candidates.get_mut(&t) {
                        c.series = None;
                        *members_all -= 1;
                    }
                }
                _ => return,
            }
        } else if *members_all >= limits.max_series {
            // No room: every remote end that would have had a place here is refused (counted
            // once each); their bytes go to `other`.
            let mut waiting: Vec<&mut Candidate> = board
                .candidates
                .values_mut()
                .filter(|c| c.series.is_none() && c.score > 0.0)
                .collect();
            waiting.sort_by(|x, y| y.score.total_cmp(&x.score));
            for c in waiting.into_iter().take(limits.top - members) {
                if !c.refused {
                    c.refused = true;
                    limits.refused += 1;
                }
            }
            return;
        }
        let Some(c) = board.candidates.get_mut(&best) else {
            return;
        };
        c.series = Some(Totals::default());
        *members_all += 1;
    }
}
