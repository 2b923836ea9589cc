//! The agent's AWS clients (credential chain, STS, EC2 DescribeSubnets, IMDS) against the local
//! AWS double, which verifies every EC2 signature with its own SigV4 code. No root needed.

use std::{sync::Arc, time::Duration};

use agent::inventory::aws::{
    credentials::{self, Env, Provider, Source},
    ec2::{self, Ec2},
    http::HttpClient,
    imds::Imds,
};
use netcost_tests::awsapi::{eks_vpc, AwsDouble, EKS_VPC as VPC};

const ROLE: &str = "arn:aws:iam::111122223333:role/netcost-agent";

fn double() -> AwsDouble {
    let mut state = eks_vpc(ROLE, "projected-sa-token");
    state.container_token = Some("pod-identity-token".into());
    state
        .metadata
        .insert("iam/security-credentials/".into(), "node-role".into());
    AwsDouble::start(state).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn token_file(name: &str, token: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("nct-aws-{name}-{}", std::process::id()));
    std::fs::write(&p, token).unwrap();
    p
}

async fn subnets_with(
    env: &Env,
    imds: Option<&Arc<Imds>>,
) -> (
    Source,
    anyhow::Result<Vec<agent::inventory::aws::xml::Subnet>>,
) {
    let http = HttpClient::new();
    let source = credentials::find(env, imds)
        .await
        .unwrap()
        .expect("a credential source");
    let sts = ec2::endpoint(None, env, "sts", "us-east-1");
    let mut provider = Provider::new(source.clone(), http.clone(), sts);
    let ec2 = Ec2::new(
        http,
        ec2::endpoint(None, env, "ec2", "us-east-1"),
        "us-east-1".into(),
    );
    let result = match provider.get().await {
        Ok(c) => ec2
            .describe_subnets(&c, VPC)
            .await
            .map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::Error::new(e)),
    };
    (source, result)
}

fn ec2_keys(aws: &AwsDouble) -> Vec<(Option<String>, bool)> {
    aws.requests()
        .into_iter()
        .filter(|r| r.service == "ec2")
        .map(|r| (r.access_key, matches!(r.signature, Some(Ok(())))))
        .collect()
}

#[tokio::test]
async fn irsa_assumes_the_role_with_the_token_then_signs_every_page_with_its_credentials() {
    let aws = double();
    let file = token_file("irsa", "projected-sa-token\n");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_EC2", &aws.url()),
        ("AWS_ENDPOINT_URL_STS", &aws.url()),
    ]);
    let (source, result) = subnets_with(&e, None).await;
    assert!(matches!(source, Source::WebIdentity { .. }), "{source:?}");
    let subnets = result.unwrap();
    let ids: Vec<&str> = subnets.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["subnet-a1", "subnet-a2", "subnet-b1", "subnet-b2"],
        "only our VPC, every page"
    );
    assert_eq!(subnets[2].zone_id.as_deref(), Some("use1-az2"));
    let sts: Vec<_> = aws
        .requests()
        .into_iter()
        .filter(|r| r.service == "sts")
        .collect();
    assert_eq!(sts.len(), 1);
    assert_eq!(
        (sts[0].status, &sts[0].signature),
        (200, &None),
        "STS is called unsigned"
    );
    let keys = ec2_keys(&aws);
    assert_eq!(keys.len(), 2, "two pages of two subnets: {keys:?}");
    for (key, verified) in keys {
        assert!(
            verified && key.as_deref().is_some_and(|k| k.starts_with("ASIAIRSA")),
            "{key:?}"
        );
    }
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_named() {
    let aws = double();
    let file = token_file("irsa-bad", "someone-elses-token");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL", &aws.url()),
    ]);
    let (_, result) = subnets_with(&e, None).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("InvalidIdentityToken"), "{err}");
    assert!(
        !err.contains("someone-elses-token"),
        "the token leaked into the error: {err}"
    );
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn eks_pod_identity_sends_the_token_file_to_the_container_endpoint() {
    let aws = double();
    let file = token_file("podid", "pod-identity-token");
    let e = env(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}/v1/credentials", aws.url()),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            file.to_str().unwrap(),
        ),
        ("AWS_ENDPOINT_URL_EC2", &aws.url()),
    ]);
    let (source, result) = subnets_with(&e, None).await;
    assert!(matches!(source, Source::Container { .. }), "{source:?}");
    assert_eq!(result.unwrap().len(), 4);
    assert!(ec2_keys(&aws)
        .iter()
        .all(|(k, ok)| *ok && k.as_deref().is_some_and(|k| k.starts_with("ASIAPODID"))));
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn the_instance_profile_comes_from_imds_when_nothing_else_is_set() {
    let aws = double();
    let imds = Arc::new(Imds::new(
        &aws.url(),
        Duration::from_secs(5),
        HttpClient::new(),
    ));
    let e = env(&[("AWS_ENDPOINT_URL_EC2", &aws.url())]);
    let (source, result) = subnets_with(&e, Some(&imds)).await;
    assert!(
        matches!(&source, Source::InstanceProfile { role, .. } if role == "node-role"),
        "{source:?}"
    );
    assert_eq!(result.unwrap().len(), 4);
    assert!(ec2_keys(&aws)
        .iter()
        .all(|(k, ok)| *ok && k.as_deref().is_some_and(|k| k.starts_with("ASIAIMDS"))));
    let network = imds.network().await.unwrap();
    assert_eq!(network.vpc_id.as_deref(), Some(VPC));
    assert_eq!(network.subnets.len(), 2);
    // Without an instance profile, the chain ends empty.
    aws.state().metadata.remove("iam/security-credentials/");
    assert!(credentials::find(&e, Some(&imds)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_bad_signature_or_region_is_refused_by_ec2() {
    let aws = double();
    aws.state()
        .secrets
        .insert("AKIDSTATIC".into(), "the-real-secret".into());
    let e = env(&[
        ("AWS_ACCESS_KEY_ID", "AKIDSTATIC"),
        ("AWS_SECRET_ACCESS_KEY", "a-wrong-secret"),
        ("AWS_ENDPOINT_URL_EC2", &aws.url()),
    ]);
    let (_, result) = subnets_with(&e, None).await;
    let err = result.unwrap_err();
    let e2 = err.downcast_ref::<ec2::Ec2Error>().expect("an EC2 error");
    assert!(
        e2.is_auth() && e2.to_string().contains("SignatureDoesNotMatch"),
        "{e2}"
    );
    // The right secret, but signed for another region than the endpoint's.
    let http = HttpClient::new();
    let creds = credentials::Credentials {
        access_key_id: "AKIDSTATIC".into(),
        secret_access_key: "the-real-secret".into(),
        session_token: None,
        expires: None,
    };
    let wrong_region = Ec2::new(http.clone(), aws.url(), "eu-west-1".into());
    let err = wrong_region
        .describe_subnets(&creds, VPC)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not us-east-1/ec2"), "{err}");
    let right = Ec2::new(http, aws.url(), "us-east-1".into());
    assert_eq!(right.describe_subnets(&creds, VPC).await.unwrap().len(), 4);
}

#[tokio::test]
async fn short_lived_credentials_are_fetched_again_and_long_lived_ones_are_not() {
    let aws = double();
    let file = token_file("refresh", "projected-sa-token");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", &aws.url()),
    ]);
    let source = credentials::find(&e, None).await.unwrap().unwrap();
    let mut provider = Provider::new(source, HttpClient::new(), aws.url());
    let sts_calls = || aws.requests().iter().filter(|r| r.service == "sts").count();
    for _ in 0..3 {
        provider.get().await.unwrap();
    }
    assert_eq!(sts_calls(), 1, "cached while far from expiry");
    // Credentials that expire within the refresh margin are replaced at every use.
    aws.state().lifetime = Duration::from_secs(60);
    provider.invalidate();
    for _ in 0..3 {
        provider.get().await.unwrap();
    }
    assert_eq!(sts_calls(), 4);
    std::fs::remove_file(file).unwrap();
}
