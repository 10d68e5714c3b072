#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn default_rules_exempt_loopback_proxy_uid_and_admin_then_redirect_80_and_443() {
    assert_eq!(
        CaptureSpec::new().nat_rules(Family::V4),
        [
            "-A TOOLGATE_OUTPUT -o lo -j RETURN",
            "-A TOOLGATE_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A TOOLGATE_OUTPUT -p tcp --dport 15000 -j RETURN",
            "-A TOOLGATE_OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 15006",
            "-A TOOLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15006",
        ]
    );
}

#[test]
fn ipv6_gets_the_same_redirects_with_its_own_loopback() {
    assert_eq!(
        CaptureSpec::new().nat_rules(Family::V6),
        [
            "-A TOOLGATE_OUTPUT -o lo -j RETURN",
            "-A TOOLGATE_OUTPUT -d ::1/128 -j RETURN",
            "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A TOOLGATE_OUTPUT -p tcp --dport 15000 -j RETURN",
            "-A TOOLGATE_OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 15006",
            "-A TOOLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15006",
        ]
    );
}

#[test]
fn default_filter_refuses_udp_to_the_captured_ports_and_nothing_else() {
    for (family, loopback) in [(Family::V4, "127.0.0.0/8"), (Family::V6, "::1/128")] {
        assert_eq!(
            CaptureSpec::new().filter_rules(family),
            [
                "-A TOOLGATE_EGRESS -o lo -j RETURN".to_string(),
                format!("-A TOOLGATE_EGRESS -d {loopback} -j RETURN"),
                "-A TOOLGATE_EGRESS -m owner --uid-owner 1337 -j RETURN".to_string(),
                "-A TOOLGATE_EGRESS -p udp --dport 80 -j REJECT".to_string(),
                "-A TOOLGATE_EGRESS -p udp --dport 443 -j REJECT".to_string(),
            ],
            "{family:?}"
        );
    }
}

#[test]
fn deny_other_drops_everything_but_replies_dns_and_exclusions() {
    let spec = CaptureSpec {
        egress: Egress::DenyOther,
        dns_servers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
        exclude_cidrs: vec![cidr("10.96.0.0/12")],
        exclude_ports: vec![5432],
        ..CaptureSpec::new()
    };
    assert_eq!(
        spec.filter_rules(Family::V4),
        [
            "-A TOOLGATE_EGRESS -o lo -j RETURN",
            "-A TOOLGATE_EGRESS -d 127.0.0.0/8 -j RETURN",
            "-A TOOLGATE_EGRESS -m owner --uid-owner 1337 -j RETURN",
            "-A TOOLGATE_EGRESS -d 10.96.0.0/12 -j RETURN",
            "-A TOOLGATE_EGRESS -p udp --dport 80 -j REJECT",
            "-A TOOLGATE_EGRESS -p udp --dport 443 -j REJECT",
            "-A TOOLGATE_EGRESS -m conntrack --ctstate ESTABLISHED,RELATED --ctdir REPLY -j RETURN",
            "-A TOOLGATE_EGRESS -p udp -d 10.96.0.10 --dport 53 -j RETURN",
            "-A TOOLGATE_EGRESS -p tcp -d 10.96.0.10 --dport 53 -j RETURN",
            "-A TOOLGATE_EGRESS -p tcp --dport 5432 -j RETURN",
            "-A TOOLGATE_EGRESS -j DROP",
        ]
    );
    let v6 = spec.filter_rules(Family::V6);
    for wanted in [
        "-A TOOLGATE_EGRESS -p ipv6-icmp --icmpv6-type neighbour-solicitation -j RETURN",
        "-A TOOLGATE_EGRESS -p udp -d fd00::a --dport 53 -j RETURN",
        "-A TOOLGATE_EGRESS -p tcp -d fd00::a --dport 53 -j RETURN",
    ] {
        assert!(v6.iter().any(|r| r == wanted), "missing {wanted}: {v6:#?}");
    }
    assert!(!v6.iter().any(|r| r.contains("10.96.0")), "{v6:#?}");
    assert_eq!(v6.last().unwrap(), "-A TOOLGATE_EGRESS -j DROP");
}

#[test]
fn exemptions_precede_every_redirect() {
    let spec = CaptureSpec {
        proxy_gid: Some(1337),
        exclude_cidrs: vec![
            cidr("10.96.0.0/12"),
            cidr("169.254.169.254/32"),
            cidr("fd00:10::/64"),
        ],
        exclude_ports: vec![8443],
        include_cidrs: vec![cidr("203.0.113.0/24"), cidr("198.51.100.0/24")],
        ports: vec![80, 443, 8080],
        ..CaptureSpec::new()
    };
    let rules = spec.nat_rules(Family::V4);
    let first_redirect = rules.iter().position(|r| r.contains("REDIRECT")).unwrap();
    assert!(rules[..first_redirect]
        .iter()
        .all(|r| r.ends_with("RETURN")));
    assert!(rules[first_redirect..]
        .iter()
        .all(|r| r.contains("REDIRECT")));
    for wanted in [
        "-A TOOLGATE_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 8443 -j RETURN",
        "-A TOOLGATE_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A TOOLGATE_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp -d 198.51.100.0/24 --dport 8080 -j REDIRECT --to-ports 15006",
    ] {
        assert!(
            rules.iter().any(|r| r == wanted),
            "missing {wanted}: {rules:#?}"
        );
    }
    // Two networks × three ports; the IPv6 exclusion is not an IPv4 rule.
    assert_eq!(rules.len() - first_redirect, 6);
    assert!(!rules.iter().any(|r| r.contains("fd00")), "{rules:#?}");
    // No IPv6 network is included: IPv6 is captured whole, minus its exclusion.
    let v6 = spec.nat_rules(Family::V6);
    assert!(v6
        .iter()
        .any(|r| r == "-A TOOLGATE_OUTPUT -d fd00:10::/64 -j RETURN"));
    assert!(v6
        .iter()
        .any(|r| r == "-A TOOLGATE_OUTPUT -p tcp --dport 8080 -j REDIRECT --to-ports 15006"));
    // UDP to an excluded port is not refused.
    let filter = spec.filter_rules(Family::V4);
    assert!(
        !filter.iter().any(|r| r.contains("--dport 8443")),
        "{filter:#?}"
    );
}

#[test]
fn repeated_entries_produce_one_rule() {
    let spec = CaptureSpec {
        ports: vec![80, 80, 443],
        exclude_ports: vec![15000, 9000, 9000],
        exclude_cidrs: vec![cidr("10.0.0.0/8"), cidr("10.0.0.0/8")],
        ..CaptureSpec::new()
    };
    let rules = spec.nat_rules(Family::V4);
    let count = |needle: &str| rules.iter().filter(|r| r.contains(needle)).count();
    assert_eq!(count("--dport 80 "), 1);
    assert_eq!(count("--dport 9000 "), 1);
    assert_eq!(count("--dport 15000 "), 1);
    assert_eq!(count("-d 10.0.0.0/8 "), 1);
}

#[test]
fn restore_input_declares_both_chains_so_a_rerun_replaces_them() {
    let spec = CaptureSpec::new();
    let text = spec.restore_input(Family::V4, Jumps::BOTH);
    let lines: Vec<&str> = text.lines().collect();
    let nat = spec.nat_rules(Family::V4).len();
    let filter = spec.filter_rules(Family::V4).len();
    assert_eq!(lines[0], "*nat");
    assert_eq!(lines[1], ":TOOLGATE_OUTPUT - [0:0]");
    assert_eq!(lines[2 + nat], "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT");
    assert_eq!(lines[3 + nat], "COMMIT");
    assert_eq!(lines[4 + nat], "*filter");
    assert_eq!(lines[5 + nat], ":TOOLGATE_EGRESS - [0:0]");
    assert_eq!(lines[6 + nat + filter], "-A OUTPUT -j TOOLGATE_EGRESS");
    assert_eq!(lines[7 + nat + filter], "COMMIT");
    assert_eq!(lines.len(), 8 + nat + filter);

    let without = spec.restore_input(
        Family::V4,
        Jumps {
            nat: false,
            filter: false,
        },
    );
    assert!(!without.contains("-A OUTPUT"), "{without}");
    assert!(without.ends_with("COMMIT\n"));
    let filter_only = spec.restore_input(
        Family::V6,
        Jumps {
            nat: false,
            filter: true,
        },
    );
    assert!(!filter_only.contains("-A OUTPUT -p tcp"), "{filter_only}");
    assert!(filter_only.contains("-A OUTPUT -j TOOLGATE_EGRESS"));
}

#[test]
fn cidrs_parse_strictly_for_both_families() {
    assert_eq!(cidr("0.0.0.0/0"), Cidr::ANY_V4);
    assert_eq!(cidr("::/0"), Cidr::ANY_V6);
    assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
    assert_eq!(cidr("172.16.0.0/12").to_string(), "172.16.0.0/12");
    assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
    assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
    assert_eq!(cidr("fd00::/8").family(), Family::V6);
    assert_eq!(
        "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string(),
        "\"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
    );
    assert_eq!(
        "2001:db8::1/32".parse::<Cidr>().unwrap_err().to_string(),
        "\"2001:db8::1/32\" has host bits set: did you mean 2001:db8::/32?"
    );
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0/8",
        "fd00::/129",
        "10.0.0.0/+8",
        "x/8",
        "10.0.0.0/08x",
        "[::1]/128",
    ] {
        assert!(
            matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn nameservers_are_read_from_resolv_conf() {
    let text = "# generated\nsearch ns.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\noptions ndots:5\n";
    assert_eq!(
        nameservers(text),
        vec![
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00::a".parse().unwrap()
        ]
    );
    assert!(nameservers("options ndots:5\n").is_empty());
}

#[test]
fn egress_modes_parse_by_name() {
    assert_eq!("deny-other".parse::<Egress>(), Ok(Egress::DenyOther));
    assert_eq!("allow-other".parse::<Egress>(), Ok(Egress::AllowOther));
    assert!("deny".parse::<Egress>().is_err());
    assert_eq!(Egress::DenyOther.to_string(), "deny-other");
}

#[test]
fn validation_rejects_specs_that_loop_capture_nothing_or_cannot_resolve() {
    let bad = [
        CaptureSpec {
            ports: vec![],
            ..CaptureSpec::new()
        },
        CaptureSpec {
            include_cidrs: vec![],
            ..CaptureSpec::new()
        },
        CaptureSpec {
            transparent_port: 15000,
            ..CaptureSpec::new()
        },
        CaptureSpec {
            ports: vec![80, 15000],
            ..CaptureSpec::new()
        },
        CaptureSpec {
            proxy_uid: 0,
            ..CaptureSpec::new()
        },
        CaptureSpec {
            exclude_ports: vec![0],
            ..CaptureSpec::new()
        },
        CaptureSpec {
            egress: Egress::DenyOther,
            ..CaptureSpec::new()
        },
    ];
    for spec in bad {
        assert!(
            matches!(spec.validate(), Err(CaptureError::Invalid(_))),
            "{spec:?}"
        );
    }
    assert!(CaptureSpec::new().validate().is_ok());
    let deny = CaptureSpec {
        egress: Egress::DenyOther,
        dns_servers: vec!["10.96.0.10".parse().unwrap()],
        ..CaptureSpec::new()
    };
    assert!(deny.validate().is_ok());
}

#[test]
fn apply_reports_a_missing_iptables_clearly() {
    let programs = Iptables {
        iptables: "/nonexistent/iptables".to_string(),
        restore: "/nonexistent/iptables-restore".to_string(),
        ip6tables: "/nonexistent/ip6tables".to_string(),
        ip6_restore: "/nonexistent/ip6tables-restore".to_string(),
    };
    for (family, program) in [(Family::V4, "iptables"), (Family::V6, "ip6tables")] {
        let err = apply(&CaptureSpec::new(), &programs, family).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot run /nonexistent/{program}:")),
            "{err}"
        );
    }
}
