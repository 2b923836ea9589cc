//! What the agent may ask the API server (a ClusterRole's rules, from deploy/) against what it
//! asked the API double: every request granted, and nothing granted that it did not use.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::apiserver::{ApiState, RequestRecord};

/// (API group, resource, verb).
pub type Permission = (String, String, String);

/// The permission a request needs.
pub fn permission(r: &RequestRecord) -> Result<Permission> {
    let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => bail!("unexpected API path {}", r.path),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, verb) = match rest {
        [resource] if r.method == "POST" => (*resource, "create"),
        [resource] if r.watch => (*resource, "watch"),
        [resource] => (*resource, "list"),
        [resource, _name] => (*resource, "get"),
        _ => bail!("unexpected API path {}", r.path),
    };
    Ok((group.into(), resource.into(), verb.into()))
}

/// The rules of the ClusterRole `name` among `docs` (API objects as JSON).
pub fn granted_by(docs: &[Value], name: &str) -> BTreeSet<Permission> {
    let mut granted = BTreeSet::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
    {
        for rule in doc["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().into_iter().flatten() {
                    for v in rule["verbs"].as_array().into_iter().flatten() {
                        granted.insert((
                            g.as_str().unwrap_or_default().to_owned(),
                            r.as_str().unwrap_or_default().to_owned(),
                            v.as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    granted
}

/// The agent's ClusterRole in deploy/rbac/rbac.yaml.
pub fn granted_by_file() -> Result<BTreeSet<Permission>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac/rbac.yaml");
    let text = std::fs::read_to_string(path)?;
    let mut docs = Vec::new();
    for doc in text.split("\n---\n") {
        docs.push(serde_saphyr::from_str::<Value>(doc).with_context(|| format!("parsing {path}"))?);
    }
    Ok(granted_by(&docs, "netcost-agent"))
}

/// Every request the agent made is granted, and nothing is granted it did not use.
pub fn assert_within(state: &ApiState, granted: &BTreeSet<Permission>) -> Result<()> {
    let mut used = BTreeSet::new();
    for r in state.requests() {
        let p = permission(&r)?;
        ensure!(
            granted.contains(&p),
            "request {} {}?{} needs {p:?}, which the ClusterRole does not grant",
            r.method,
            r.path,
            r.query
        );
        used.insert(p);
    }
    eprintln!("RBAC used: {used:?}");
    ensure!(
        &used == granted,
        "the ClusterRole grants more than the agent used: {:?}",
        granted.difference(&used).collect::<Vec<_>>()
    );
    Ok(())
}
