//! Fuzzing every parser of outside input: a mutation fuzzer (seeded with real files, driven by
//! the error each input reaches: an input that ends in an error not seen yet joins the corpus).
//! Each input must end without a panic, within `MAX_TIME` and allocating at most `MAX_MEMORY` on
//! its thread. `cargo xtask test` runs `NETCOST_FUZZ_ITERATIONS` (default 2,000) inputs per
//! parser; `cargo xtask fuzz` runs many more in release. A failing input is written to
//! `target/fuzz-failures/`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::HashSet,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

/// Counts what each thread allocates, so one input's peak can be told apart from other tests
/// running at the same time.
struct Counting;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the thread-locals are const-initialized Cells that
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = CURRENT.try_with(|c| {
                let now = c.get() + layout.size();
                c.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(layout.size())));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MAX_TIME: Duration = Duration::from_secs(2);
const MAX_MEMORY: usize = 64 * 1024 * 1024;
const CORPUS: usize = 512;

/// xorshift64*: deterministic, so a failure is found again with the same seed.
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[&[u8]]) {
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    data.insert(i.min(data.len()), rng.next() as u8);
                }
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(len - i).min(64);
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a run, many times sometimes (deep nesting, long lists).
                let i = rng.below(len);
                let n = 1 + rng.below(len - i).min(256);
                let chunk = data[i..i + n].to_vec();
                let most = if rng.below(8) == 0 { 200 } else { 3 };
                for _ in 0..1 + rng.below(most) {
                    data.splice(i..i, chunk.iter().copied());
                }
            }
            5 | 6 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                let i = rng.below(len + 1);
                data.splice(i..i, token.iter().copied());
            }
            7 if len > 0 => {
                let i = rng.below(len);
                let v = [0u8, 0xff, 0x7f, 0x80, b'\n', b'"', b'\\'][rng.below(7)];
                data[i] = v;
            }
            8 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - from).min(512);
                    let at = rng.below(len + 1);
                    data.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            _ if len > 0 => data.truncate(rng.below(len)),
            _ => data.push(rng.next() as u8),
        }
    }
    data.truncate(1 << 20);
}

pub(super) fn iterations() -> usize {
    std::env::var("NETCOST_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Runs `parse` on the seeds and on `iterations()` mutations of them. `parse` returns what the
/// input came to (`Ok`, or the start of its error): new outcomes grow the corpus.
pub(super) fn fuzz(
    name: &str,
    seeds: &[&[u8]],
    dictionary: &[&[u8]],
    parse: impl Fn(&[u8]) -> String,
) {
    fuzz_with(
        name,
        seeds,
        dictionary,
        |_: &mut Rng, _: &mut Vec<u8>| false,
        parse,
    )
}

/// The same with a mutator that knows the format (`structured` returns false when it could not
/// apply; then the byte mutations are used).
pub(super) fn fuzz_with(
    name: &str,
    seeds: &[&[u8]],
    dictionary: &[&[u8]],
    structured: impl Fn(&mut Rng, &mut Vec<u8>) -> bool,
    parse: impl Fn(&[u8]) -> String,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let mut outcomes: HashSet<String> = HashSet::new();
    let started = Instant::now();
    let n = iterations();
    for i in 0..n + seeds.len() {
        let input = if i < seeds.len() {
            seeds[i].to_vec()
        } else {
            let mut d = corpus[rng.below(corpus.len())].clone();
            if rng.below(2) == 1 || !structured(&mut rng, &mut d) {
                mutate(&mut rng, &mut d, &corpus, dictionary);
            }
            d
        };
        let before = CURRENT.with(Cell::get);
        PEAK.with(|p| p.set(before));
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| parse(&input)));
        let took = t.elapsed();
        let memory = PEAK.with(Cell::get).saturating_sub(before);
        let failure = match &outcome {
            Err(_) => Some("panicked".to_owned()),
            Ok(_) if took > MAX_TIME => Some(format!("took {took:?}")),
            Ok(_) if memory > MAX_MEMORY => Some(format!("allocated {memory} bytes")),
            Ok(_) => None,
        };
        if let Some(why) = failure {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{i}.bin"));
            let _ = std::fs::write(&file, &input);
            panic!("fuzz {name}: input {i} {why}; saved to {}", file.display());
        }
        if let Ok(o) = outcome {
            // Error kinds, not positions: digits do not count.
            let key: String = o.chars().filter(|c| !c.is_ascii_digit()).collect();
            if outcomes.insert(key) && corpus.len() < CORPUS {
                corpus.push(input);
            }
        }
    }
    eprintln!(
        "fuzz {name}: {n} inputs in {:?}, {} outcomes, corpus {}",
        started.elapsed(),
        outcomes.len(),
        corpus.len()
    );
}

pub(super) fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

pub(super) fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

pub(super) const YAML_TOKENS: &[&[u8]] = &[
    b": ",
    b"\n",
    b"\n  ",
    b"- ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!str ",
    b"\"",
    b"'",
    b"#",
    b"---\n",
    b"...\n",
    b"~",
    b"null",
    b"true",
    b"1e309",
    b"-1",
    b"0x7f",
    b"10.0.0.0/8",
    b"::/0",
    b"fd00::/7",
    b"\t",
    b"|\n  ",
    b">\n  ",
    b"? ",
    b"%YAML 1.2\n",
];

#[test]
fn fuzz_config() {
    let seeds: [&[u8]; 3] = [
        include_bytes!("../../../deploy/base/config.yaml"),
        include_bytes!("../../../deploy/config/local.yaml"),
        include_bytes!("../../../deploy/overlays/kubecost/config.yaml"),
    ];
    fuzz("config", &seeds, YAML_TOKENS, |b| {
        outcome(crate::config::Config::parse(&text(b)))
    });
}

#[test]
fn fuzz_price_file() {
    let seeds: [&[u8]; 1] = [include_bytes!("../../data/aws-prices.yaml")];
    fuzz("prices", &seeds, YAML_TOKENS, |b| {
        outcome(crate::price::PriceTable::parse("fuzz", &text(b)))
    });
}

#[test]
fn fuzz_kubecost_config() {
    let seed = b"destinations:\n  in-zone: [\"127.0.0.0/8\", \"169.254.0.0/16\", \"10.0.0.0/8\"]\n  in-region: [\"10.1.0.0/16\"]\n  cross-region: []\n  internet: [\"8.8.8.0/24\"]\n  direct-classification:\n    - region: us-east-1\n      zone: us-east-1c\n      ips: [\"10.0.5.0/24\"]\nservices:\n  amazon-web-services: true\n  google-cloud-services: false\n  services:\n    - service: test-service-1\n      ips: [\"19.1.1.2\"]\n";
    fuzz("kubecost", &[seed], YAML_TOKENS, |b| {
        outcome(crate::classify::kubecost::KubecostRules::parse(
            "fuzz",
            &text(b),
        ))
    });
}

#[test]
fn fuzz_service_ranges() {
    let seeds: [&[u8]; 1] = [include_bytes!("../../data/aws-service-ranges.tsv")];
    let tokens: &[&[u8]] = &[
        b"\n",
        b" ",
        b"\t",
        b"#",
        b"aws-s3",
        b"us-east-1",
        b"/33",
        b"::/0",
        b"0.0.0.0/0",
    ];
    fuzz("service-ranges", &seeds, tokens, |b| {
        outcome(crate::classify::services::ServiceRanges::parse(
            "fuzz",
            &text(b),
        ))
    });
}

#[test]
fn fuzz_cgroup_paths_and_mounts() {
    let seeds: [&[u8]; 4] = [
        b"/kubepods/besteffort/pod1e57c0de-0000-4000-8000-000000000001/c0ffee01",
        b"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1e57c0de_0000_4000_8000_000000000002.slice/cri-containerd-c0ffee02.scope",
        b"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod0123456789abcdef0123456789abcdef.slice",
        b"cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n",
    ];
    let tokens: &[&[u8]] = &[
        b"/",
        b".slice",
        b".scope",
        b"pod",
        b"kubepods",
        b"-",
        b"_",
        b"\\040",
        b"\n",
    ];
    fuzz("cgroup", &seeds, tokens, |b| {
        let t = text(b);
        let id = crate::attribute::identity::parse_cgroup_path(&t);
        let mount = crate::attribute::identity::find_cgroup2_mount(&t);
        format!("{id:?} {mount:?}").chars().take(20).collect()
    });
}

#[test]
fn fuzz_checkpoint() {
    use crate::state::{Checkpoint, FORMAT};
    let mut cp = Checkpoint {
        format: FORMAT,
        abi: agent_common::ABI_VERSION,
        drained_epoch: Some(7),
        ..Default::default()
    };
    let pod = crate::vocab::PodLabels {
        namespace: "shop".into(),
        pod: "cart-1".into(),
        pod_uid: "u".into(),
        workload_kind: "Deployment".into(),
        workload: "cart".into(),
    };
    cp.totals.traffic.push(crate::expose::TrafficTotal {
        labels: crate::vocab::TrafficLabels::pod(
            &pod,
            crate::vocab::TrafficClass::Internet,
            crate::vocab::Direction::Egress,
        ),
        bytes: 123,
        packets: 4,
        dollars: 0.25,
    });
    let seed = serde_json::to_vec(&cp).unwrap();
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"1e999",
        b"-1",
        b"18446744073709551616",
        b"\\u0000",
        b"\\ud800",
    ];
    fuzz("checkpoint", &[&seed], tokens, |b| {
        outcome(Checkpoint::parse(&text(b)))
    });
}

#[test]
fn fuzz_aws_answers() {
    let seeds: [&[u8]; 3] = [
        b"<DescribeSubnetsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><subnetSet><item><subnetId>subnet-0a</subnetId><cidrBlock>10.0.16.0/20</cidrBlock><ipv6CidrBlockAssociationSet><item><ipv6CidrBlock>2600:1f18::/64</ipv6CidrBlock><ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item></ipv6CidrBlockAssociationSet><availabilityZone>us-east-1b</availabilityZone><availabilityZoneId>use1-az2</availabilityZoneId></item></subnetSet><nextToken>t</nextToken></DescribeSubnetsResponse>",
        b"<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>t</SessionToken><SecretAccessKey>s</SecretAccessKey><Expiration>2026-12-01T23:00:00Z</Expiration><AccessKeyId>A</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
        b"{\"Code\":\"Success\",\"AccessKeyId\":\"AK\",\"SecretAccessKey\":\"S\",\"Token\":\"T\",\"Expiration\":\"2026-12-01T23:00:00Z\"}",
    ];
    let tokens: &[&[u8]] = &[
        b"<",
        b">",
        b"</",
        b"<!DOCTYPE a [<!ENTITY x \"y\">]>",
        b"&x;",
        b"<item>",
        b"</item>",
        b"\"",
        b"&amp;",
        b"<![CDATA[",
        b"]]>",
    ];
    fuzz("aws", &seeds, tokens, |b| {
        let t = text(b);
        format!(
            "{} {} {}",
            outcome(crate::inventory::aws::xml::describe_subnets(&t)),
            outcome(crate::inventory::aws::xml::assume_role_credentials(&t)),
            crate::inventory::aws::xml::error_message(&t)
                .chars()
                .take(8)
                .collect::<String>()
        )
    });
}

mod netlink;
