//! netcost agent. The data goes one way: kernel maps → drain → attribute → classify → price →
//! expose, and the totals are kept (state) before the kernel entries they came from are deleted.
//! Inputs on the side feed attribution and classification: the Kubernetes and AWS inventory
//! (`inventory`) and conntrack (`classify::nat`). `vocab` is the ground floor every stage speaks;
//! `pipeline` runs one drain through the stages in order. See ARCHITECTURE.md.

pub mod vocab;

pub mod config;

pub mod kernel;

pub mod drain;

pub mod inventory;

pub mod attribute;

pub mod classify;

pub mod price;

pub mod expose;

pub mod state;

pub mod pipeline;

/// After the trip: `netcost-agent report` reads what agents exposed (through Prometheus or
/// `/metrics`) and says what to change.
pub mod report;

/// `netcost-agent view`: one agent live in a terminal, from its `/metrics`.
pub mod view;

#[cfg(test)]
mod fuzz;
