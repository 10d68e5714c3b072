use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn default_rules_exempt_loopback_proxy_uid_and_admin_then_redirect_80_and_443() {
    assert_eq!(
        CaptureSpec::new().rules(),
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
fn exemptions_precede_every_redirect() {
    let spec = CaptureSpec {
        proxy_gid: Some(1337),
        exclude_cidrs: vec![cidr("10.96.0.0/12"), cidr("169.254.169.254/32")],
        exclude_ports: vec![8443],
        include_cidrs: vec![cidr("203.0.113.0/24"), cidr("198.51.100.0/24")],
        ports: vec![80, 443, 8080],
        ..CaptureSpec::new()
    };
    let rules = spec.rules();
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
    // Two networks × three ports.
    assert_eq!(rules.len() - first_redirect, 6);
}

#[test]
fn repeated_entries_produce_one_rule() {
    let spec = CaptureSpec {
        ports: vec![80, 80, 443],
        exclude_ports: vec![15000, 9000, 9000],
        exclude_cidrs: vec![cidr("10.0.0.0/8"), cidr("10.0.0.0/8")],
        ..CaptureSpec::new()
    };
    let rules = spec.rules();
    let count = |needle: &str| rules.iter().filter(|r| r.contains(needle)).count();
    assert_eq!(count("--dport 80 "), 1);
    assert_eq!(count("--dport 9000 "), 1);
    assert_eq!(count("--dport 15000 "), 1);
    assert_eq!(count("-d 10.0.0.0/8 "), 1);
}

#[test]
fn restore_input_declares_the_chain_so_a_rerun_replaces_it() {
    let spec = CaptureSpec::new();
    let text = spec.restore_input(true);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "*nat");
    assert_eq!(lines[1], ":TOOLGATE_OUTPUT - [0:0]");
    assert_eq!(
        lines[lines.len() - 2],
        "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT"
    );
    assert_eq!(lines[lines.len() - 1], "COMMIT");
    assert_eq!(lines.len(), 2 + spec.rules().len() + 2);

    let without = spec.restore_input(false);
    assert!(!without.contains("-A OUTPUT"), "{without}");
    assert!(without.ends_with("COMMIT\n"));
}

#[test]
fn cidrs_parse_strictly() {
    assert_eq!(cidr("0.0.0.0/0"), Cidr::ANY);
    assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
    assert_eq!(cidr("172.16.0.0/12").to_string(), "172.16.0.0/12");
    assert_eq!(
        "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string(),
        "\"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
    );
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0/8",
        "fd00::/8",
        "10.0.0.0/+8",
        "x/8",
        "10.0.0.0/08x",
    ] {
        assert!(
            matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn validation_rejects_specs_that_loop_or_capture_nothing() {
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
    ];
    for spec in bad {
        assert!(
            matches!(spec.validate(), Err(CaptureError::Invalid(_))),
            "{spec:?}"
        );
    }
    assert!(CaptureSpec::new().validate().is_ok());
}

#[test]
fn apply_reports_a_missing_iptables_clearly() {
    let programs = Iptables {
        iptables: "/nonexistent/iptables".to_string(),
        restore: "/nonexistent/iptables-restore".to_string(),
    };
    let err = apply(&CaptureSpec::new(), &programs).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot run /nonexistent/iptables:"),
        "{err}"
    );
}
