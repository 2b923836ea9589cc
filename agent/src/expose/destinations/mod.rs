//! The destinations group: for each owner (a pod, the node) and direction, its top remote ends by
//! bytes — a Service, a pod, a node, an AWS service, an address — each with its bytes and
//! dollars, and everything else in one `other` series per traffic class. Summed over an owner's
//! destinations, bytes equal the owner's `netcost_network_bytes_total`.
//!
//! Ranking: each owner and direction keeps a small table of candidates (twice `top`) with a
//! byte score that decays with `half_life` (an exponentially decayed byte count, updated at every
//! drain). When the table is full, a new remote end takes the place of the non-member that added
//! least in this drain, and only if it added more, so a spray of small talkers cannot push out a
//! steady one while a new heavy talker gets in at once. A candidate
//! joins the top when there is room, or when its score is more than twice the weakest member's:
//! membership does not flap from drain to drain. A member
//! that drops out loses its series (its past stays in Prometheus' history, which is what
//! `increase()` reads) and later bytes to it go to `other`. Member series are capped at
//! `max_series` for the whole agent; remote ends the cap refuses are counted once each, their
//! bytes go to `other`. So over any range, the increases of an owner's destination series add
//! up to the increase of its `netcost_network_bytes_total`.
//!
//! `board`: one owner's and direction's ranking table; `encode`: the series' labels and the
//! collector that encodes both families from the tables.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::{Deserialize, Serialize};

use crate::{
    config::DestinationsConfig,
    vocab::{Direction, Owner, Peer, PeerKind, PodLabels, Registries, TrafficClass, TrafficLabels},
};

mod board;
mod encode;
#[cfg(test)]
mod tests;

use board::{rank, rebalance, Board, Limits, Totals};
pub use encode::DestinationLabels;
use encode::Families;

/// A member must outscore the weakest member this many times to take its place.
const HYSTERESIS: f64 = 2.0;
/// Candidates kept per owner and direction, per member.
const CANDIDATES_PER_MEMBER: usize = 2;

/// One series as a checkpoint keeps it; `score` is a member's ranking (0 for `other`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationTotal {
    pub labels: DestinationLabels,
    pub bytes: u64,
    pub dollars: f64,
    pub score: f64,
}

/// By owner and direction, then pod (looked up by reference: recording clones nothing).
type Boards = HashMap<(Owner, Direction), HashMap<PodLabels, Board>>;

#[derive(Debug, Default)]
struct State {
    boards: Boards,
    members: usize,
}

pub struct DestinationMetrics {
    config: DestinationsConfig,
    state: Arc<Mutex<State>>,
    series: Gauge,
    refused: Counter,
    decayed_at: Option<Instant>,
}

impl DestinationMetrics {
    /// Registers nothing when destinations are off.
    pub fn register(registries: &mut Registries, config: &DestinationsConfig) -> Self {
        let m = DestinationMetrics {
            config: config.clone(),
            state: Arc::default(),
            series: Gauge::default(),
            refused: Counter::default(),
            decayed_at: None,
        };
        if !config.enabled {
            return m;
        }
        registries
            .durable()
            .register_collector(Box::new(Families(m.state.clone())));
        let r = registries.live();
        r.register(
            "destination_series",
            "Destination series other than remote_kind=\"other\" (capped by destinations.max_series)",
            m.series.clone(),
        );
        r.register(
            "destination_refused",
            "Remote ends that ranked into an owner's top but got no series because destinations.max_series was reached (their bytes are in remote_kind=\"other\")",
            m.refused.clone(),
        );
        m
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of `labels` (a traffic series) to `peer`, with their dollars; ranked at `flush`.
    pub fn add(&mut self, labels: &TrafficLabels, peer: Peer, bytes: u64, dollars: Option<f64>) {
        if !self.config.enabled {
            return;
        }
        let mut state = self.state();
        let pods = state
            .boards
            .entry((labels.owner, labels.direction))
            .or_default();
        let board = match pods.get_mut(&labels.pod) {
            Some(b) => b,
            None => pods.entry(labels.pod.clone()).or_default(),
        };
        board
            .pending
            .entry((labels.destination.class, peer))
            .or_default()
            .add(bytes, dollars.unwrap_or(0.0));
    }

    /// Bytes of one series' owner to many peers at once (one lock, one board lookup): what the
    /// drain gives for each owner and direction. Each item: class, peer, bytes, dollars.
    pub fn add_all(
        &mut self,
        owner: Owner,
        direction: Direction,
        pod: &PodLabels,
        items: impl IntoIterator<Item = (TrafficClass, Peer, u64, Option<f64>)>,
    ) {
        if !self.config.enabled {
            return;
        }
        let mut state = self.state();
        let pods = state.boards.entry((owner, direction)).or_default();
        let board = match pods.get_mut(pod) {
            Some(b) => b,
            None => pods.entry(pod.clone()).or_default(),
        };
        for (class, peer, bytes, dollars) in items {
            board
                .pending
                .entry((class, peer))
                .or_default()
                .add(bytes, dollars.unwrap_or(0.0));
        }
    }

    /// Ranks this drain's bytes and records them, each under its member or `other`.
    pub fn flush(&mut self, now: Instant) {
        if !self.config.enabled {
            return;
        }
        let decay = self.decay_factor(now);
        let mut limits = Limits {
            top: self.config.top,
            capacity: self.config.top * CANDIDATES_PER_MEMBER,
            max_series: self.config.max_series,
            refused: 0,
        };
        let mut guard = self.state();
        let state = &mut *guard;
        for board in state.boards.values_mut().flat_map(|p| p.values_mut()) {
            if decay < 1.0 {
                for c in board.candidates.values_mut() {
                    c.score *= decay;
                }
                // Forgotten talkers leave the table (members stay until replaced).
                board
                    .candidates
                    .retain(|_, c| c.series.is_some() || c.score >= 1.0);
            }
            if board.pending.is_empty() {
                continue;
            }
            let pending = std::mem::take(&mut board.pending);
            rank(board, &pending, limits.capacity);
            rebalance(board, &mut state.members, &mut limits);
            for (target, t) in pending {
                let member = board
                    .candidates
                    .get_mut(&target)
                    .and_then(|c| c.series.as_mut());
                match member {
                    Some(series) => series.add(t.bytes, t.dollars),
                    None => board
                        .others
                        .entry(target.0)
                        .or_default()
                        .add(t.bytes, t.dollars),
                }
            }
        }
        self.series.set(state.members as i64);
        drop(guard);
        self.refused.inc_by(limits.refused);
    }

    /// The ranking's decay since the last drain (1: none).
    fn decay_factor(&mut self, now: Instant) -> f64 {
        let Some(at) = self.decayed_at.replace(now) else {
            return 1.0;
        };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        0.5f64.powf(elapsed / self.config.half_life.as_secs_f64().max(1.0))
    }

    /// Removes every destination series of a pod (after its grace period).
    pub fn remove_pod(&mut self, uid: &str) {
        let mut guard = self.state();
        let state = &mut *guard;
        for (&(owner, _), pods) in &mut state.boards {
            if owner != Owner::Pod {
                continue;
            }
            let members = &mut state.members;
            pods.retain(|pod, board| {
                if pod.pod_uid != uid {
                    return true;
                }
                *members -= board.members();
                false
            });
        }
        self.series.set(state.members as i64);
    }

    /// Every member and `other` series with its totals (and members' scores).
    pub fn totals(&self) -> Vec<DestinationTotal> {
        let state = self.state();
        let mut out = Vec::new();
        for (&(owner, direction), pods) in &state.boards {
            for (pod, board) in pods {
                for (class, peer, t, score) in board.series() {
                    out.push(DestinationTotal {
                        labels: DestinationLabels {
                            owner,
                            pod: pod.clone(),
                            direction,
                            class,
                            peer: peer.clone(),
                        },
                        bytes: t.bytes,
                        dollars: t.dollars,
                        score,
                    });
                }
            }
        }
        out
    }

    /// Takes over a predecessor's series and ranking (labels cleaned by the caller).
    pub fn restore(&mut self, totals: &[DestinationTotal]) {
        if !self.config.enabled {
            return;
        }
        let mut guard = self.state();
        let state = &mut *guard;
        for t in totals {
            let l = &t.labels;
            let board = state
                .boards
                .entry((l.owner, l.direction))
                .or_default()
                .entry(l.pod.clone())
                .or_default();
            let series = if l.peer.kind == PeerKind::Other {
                board.others.entry(l.class).or_default()
            } else {
                let c = board
                    .candidates
                    .entry((l.class, l.peer.clone()))
                    .or_default();
                c.score = t.score;
                if c.series.is_none() {
                    state.members += 1;
                }
                c.series.get_or_insert_with(Totals::default)
            };
            series.add(t.bytes, t.dollars);
        }
        self.series.set(state.members as i64);
    }
}
