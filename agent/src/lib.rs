//! netcost agent: kernel maps → drain → attribute → classify → expose.
//!
//! Each step is a module that can be read alone: [`kernel`] loads and attaches the programs,
//! [`drain`] takes their counts out losslessly, [`identity`] attributes cgroups to pods,
//! [`topology`] classifies remote addresses, [`metrics`] and [`server`] expose the result, and
//! [`pipeline`] runs the steps in that order.

pub mod auth;
pub mod aws;
pub mod bpf_sys;
pub mod checkpoint;
pub mod config;
pub mod conntrack;
pub mod drain;
#[cfg(test)]
mod fuzz;
pub mod identity;
pub mod inventory;
pub mod k8s;
pub mod kernel;
pub mod kubecost;
pub mod labels;
pub mod metrics;
pub mod nat;
pub mod pipeline;
pub mod prices;
pub mod privileges;
pub mod route;
pub mod server;
pub mod services;
pub mod tls;
pub mod topology;
pub mod yaml;
