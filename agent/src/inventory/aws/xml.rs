//! The few XML documents of AWS's Query APIs netcost reads: EC2 `DescribeSubnets`, STS
//! `AssumeRoleWithWebIdentity`, and their error answers. Elements are matched by local name
//! (the namespaces differ per API version); a DTD is refused by the parser, so no entity can
//! expand.

use super::keys::{parse_time, Credentials};
use crate::vocab::Cidr;

/// One subnet of `DescribeSubnets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub zone: Option<String>,
    pub zone_id: Option<String>,
    pub ipv4: Option<Cidr>,
    pub ipv6: Vec<Cidr>,
}

/// One page of `DescribeSubnets`.
#[derive(Debug, Default)]
pub struct SubnetPage {
    pub subnets: Vec<Subnet>,
    pub next_token: Option<String>,
}

fn parse(text: &str) -> Result<roxmltree::Document<'_>, String> {
    roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn items<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(|c| c.is_element() && c.tag_name().name() == "item")
}

/// A `DescribeSubnetsResponse`. A subnet with an unparsable prefix is an error naming it: the
/// answer is from AWS, and a prefix silently dropped would leave its zone unplaced.
pub fn describe_subnets(text: &str) -> Result<SubnetPage, String> {
    let doc = parse(text)?;
    let root = doc.root_element();
    if root.tag_name().name() != "DescribeSubnetsResponse" {
        return Err(format!(
            "expected DescribeSubnetsResponse, found {}",
            root.tag_name().name()
        ));
    }
    let mut page = SubnetPage {
        next_token: child_text(root, "nextToken"),
        ..Default::default()
    };
    let Some(set) = child(root, "subnetSet") else {
        return Ok(page);
    };
    for item in items(set) {
        let id = child_text(item, "subnetId").unwrap_or_default();
        let cidr = |text: String| {
            text.parse::<Cidr>()
                .map_err(|e| format!("subnet {id}: {text:?}: {e}"))
        };
        let ipv4 = child_text(item, "cidrBlock").map(cidr).transpose()?;
        let mut ipv6 = Vec::new();
        if let Some(assoc) = child(item, "ipv6CidrBlockAssociationSet") {
            for a in items(assoc) {
                let state = child(a, "ipv6CidrBlockState").and_then(|s| child_text(s, "state"));
                if state.as_deref().is_some_and(|s| s != "associated") {
                    continue;
                }
                if let Some(text) = child_text(a, "ipv6CidrBlock") {
                    ipv6.push(cidr(text)?);
                }
            }
        }
        page.subnets.push(Subnet {
            zone: child_text(item, "availabilityZone"),
            zone_id: child_text(item, "availabilityZoneId"),
            id,
            ipv4,
            ipv6,
        });
    }
    Ok(page)
}

/// The credentials of an `AssumeRoleWithWebIdentityResponse`.
pub fn assume_role_credentials(text: &str) -> Result<Credentials, String> {
    let doc = parse(text)?;
    let creds = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Credentials")
        .ok_or("no Credentials element")?;
    let field = |name: &str| child_text(creds, name).ok_or(format!("Credentials without {name}"));
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: child_text(creds, "SessionToken"),
        expires: Some(parse_time(&field("Expiration")?)?),
    })
}

/// `Code: Message` of an AWS error answer (EC2's `<Response><Errors><Error>`, STS's
/// `<ErrorResponse><Error>`), or the start of the text when it is not one.
pub fn error_message(text: &str) -> String {
    let found = parse(text).ok().and_then(|doc| {
        let e = doc
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
        Some(format!(
            "{}: {}",
            child_text(e, "Code").unwrap_or_default(),
            child_text(e, "Message").unwrap_or_default()
        ))
    });
    found.unwrap_or_else(|| text.chars().take(200).collect())
}

/// The error code of an AWS error answer.
pub fn error_code(text: &str) -> Option<String> {
    let doc = parse(text).ok()?;
    let e = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
    child_text(e, "Code")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSubnetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
    <subnetSet>
        <item>
            <subnetId>subnet-0a</subnetId>
            <state>available</state>
            <vpcId>vpc-0abc</vpcId>
            <cidrBlock>10.0.16.0/20</cidrBlock>
            <ipv6CidrBlockAssociationSet>
                <item>
                    <ipv6CidrBlock>2600:1f18:1:116::/64</ipv6CidrBlock>
                    <associationId>subnet-cidr-assoc-1</associationId>
                    <ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState>
                </item>
                <item>
                    <ipv6CidrBlock>2600:1f18:1:117::/64</ipv6CidrBlock>
                    <ipv6CidrBlockState><state>disassociated</state></ipv6CidrBlockState>
                </item>
            </ipv6CidrBlockAssociationSet>
            <availabilityZone>us-east-1b</availabilityZone>
            <availabilityZoneId>use1-az2</availabilityZoneId>
            <tagSet><item><key>Name</key><value>b</value></item></tagSet>
        </item>
        <item>
            <subnetId>subnet-0b</subnetId>
            <cidrBlock>10.0.0.0/20</cidrBlock>
            <availabilityZone>us-east-1a</availabilityZone>
            <availabilityZoneId>use1-az1</availabilityZoneId>
        </item>
    </subnetSet>
    <nextToken>page-2</nextToken>
</DescribeSubnetsResponse>"#;

    #[test]
    fn reads_subnets_with_their_zone_ids_and_the_next_page() {
        let page = describe_subnets(PAGE).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("page-2"));
        assert_eq!(page.subnets.len(), 2);
        let b = &page.subnets[0];
        assert_eq!(
            (b.id.as_str(), b.zone.as_deref(), b.zone_id.as_deref()),
            ("subnet-0a", Some("us-east-1b"), Some("use1-az2"))
        );
        assert_eq!(b.ipv4, Some("10.0.16.0/20".parse().unwrap()));
        assert_eq!(b.ipv6, vec!["2600:1f18:1:116::/64".parse().unwrap()]);
        assert!(page.subnets[1].ipv6.is_empty());
    }

    #[test]
    fn hostile_documents_are_errors_not_panics() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><DescribeSubnetsResponse>&lol2;</DescribeSubnetsResponse>"#;
        assert!(describe_subnets(bomb).is_err());
        assert!(describe_subnets("<Other/>")
            .unwrap_err()
            .contains("DescribeSubnetsResponse"));
        assert!(describe_subnets("not xml").is_err());
        let bad = PAGE.replace("10.0.16.0/20", "10.0.16.0/99");
        let e = describe_subnets(&bad).unwrap_err();
        assert!(e.contains("subnet-0a"), "{e}");
    }

    #[test]
    fn reads_sts_credentials_and_errors() {
        let ok = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok</SessionToken><SecretAccessKey>sec</SecretAccessKey><Expiration>2026-12-01T23:00:00Z</Expiration><AccessKeyId>ASIA1</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let c = assume_role_credentials(ok).unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let err = r#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>expired</Message></Error></ErrorResponse>"#;
        assert_eq!(error_message(err), "InvalidIdentityToken: expired");
        let ec2 = r#"<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>no</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(error_code(ec2).as_deref(), Some("UnauthorizedOperation"));
        assert_eq!(error_message("plain"), "plain");
    }
}
