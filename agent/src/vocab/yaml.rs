//! The one way netcost reads YAML (its config, price files, Kubecost's config): serde-saphyr
//! with limits sized for files of a few hundred lines, so that a hostile file — an alias bomb,
//! a document of millions of nodes — is refused with an error naming the limit it broke instead
//! of costing unbounded time and memory.

use serde::de::DeserializeOwned;
use serde_saphyr::{options::AliasLimits, Budget, Options};

/// The limits (each far above what a real file of ours needs).
pub fn options() -> Options {
    // The structs are non-exhaustive: set fields on the defaults.
    let mut budget = Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = 4 * 1024 * 1024;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = 16 * 1024 * 1024;
    let mut aliases = AliasLimits::default();
    aliases.max_total_replayed_events = 100_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits = aliases;
    options
}

/// Parses one YAML document into `T` within the limits.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_naming_the_limit() {
        // Each level holds the one before it ten times: 10^9 strings if expanded.
        let mut bomb = String::from("a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        // Refused by the budget before it is expanded (no timed assertion: the time it takes is
        // bounded by the budget, and a loaded machine must not fail the test).
        let e = from_str::<serde_json::Value>(&bomb)
            .unwrap_err()
            .to_string();
        eprintln!("alias bomb: {e}");
        assert!(e.contains("budget breached"), "{e}");
    }

    #[test]
    fn ordinary_documents_pass() {
        let v: serde_json::Value = from_str("a: &x [1, 2]\nb: *x\nc: { d: e }\n").unwrap();
        assert_eq!(v["b"][1], 2);
    }
}
