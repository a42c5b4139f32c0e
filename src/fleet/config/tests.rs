use super::*;

fn check(text: &str) -> Result<FleetPlan, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.path().join("lime.ko"), b"\x7fELF module").unwrap();
    load(&path, &Overrides::default())
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let errors = check(
        "hosts:\n  - addr: a\n    module: lime.ko\n    prot: 22\n  - port: \"x\"\n    module: lime.ko\nworkerz: 3\n",
    )
    .err()
    .unwrap();
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("fleet.yaml:4:5: unknown key `prot`")
            && lines[0].contains("did you mean `port`"),
        "{text}"
    );
    assert!(lines[1].contains(":5:5: a host needs addr:"), "{text}");
    assert!(lines[2].contains(":7:1: unknown key `workerz`"), "{text}");
}

#[test]
fn defaults_chains_and_margarita_shotgun_keys() {
    let plan = check(
        "defaults:\n  username: ops\n  module: lime.ko\n  agent: false\n  known_hosts: kh\njump_chains:\n  dmz: [\"bastion:2222\", {addr: inner, username: jumper}]\nworkers: auto\nhosts:\n  - addr: 10.0.0.1\n    jump: dmz\n  - addr: 10.0.0.2\n    port: 2200\n    username: root\n    jump_host: {addr: b2, port: 23}\n",
    )
    .unwrap();
    assert_eq!(plan.workers, Some(Workers::Auto));
    assert_eq!(plan.hosts.len(), 2);
    let first = &plan.hosts[0].job;
    let route: Vec<String> = first.route.iter().map(|e| e.to_string()).collect();
    assert_eq!(route.len(), 3, "{route:?}");
    assert_eq!(first.route[0].user, "ops");
    assert_eq!(first.route[0].port, 2222);
    assert_eq!(first.route[1].user, "jumper");
    assert_eq!(first.target().host, "10.0.0.1");
    assert!(first.host_keys.known_hosts.ends_with("kh"));
    let second = &plan.hosts[1];
    assert_eq!(second.name, "10.0.0.2:2200");
    assert_eq!(second.job.route[0].user, "root");
    assert_eq!(second.job.route[0].port, 23);
    assert_eq!(second.job.target().user, "root");
    assert!(!second.job.target().credentials.use_agent);
}

#[test]
fn a_bare_string_is_a_host_address() {
    let plan = check("defaults: {module: lime.ko}\nhosts: [10.0.0.7, {addr: b}]\n").unwrap();
    assert_eq!(plan.hosts[0].name, "10.0.0.7");
    assert_eq!(plan.hosts[1].job.target().host, "b");
    let empty = check("# nothing\n").err().unwrap().to_string();
    assert!(empty.ends_with("fleet.yaml: the fleet file is empty; it needs at least hosts: (see config.example.yaml)"), "{empty}");
}

#[test]
fn without_a_module_auto_and_kcore_read_proc_kcore() {
    let plan = check(
        "hosts:\n  - {addr: a}\n  - {addr: b, method: kcore, digest: false}\n  - {addr: c, module: lime.ko, method: lime, compress: true}\n",
    )
    .unwrap();
    use crate::pipeline::source::Method;
    let [a, b, c] = &plan.hosts[..] else { panic!() };
    assert_eq!(a.job.source.method, Method::Auto);
    assert!(a.job.module.file().unwrap().bytes.is_empty());
    assert_eq!(b.job.source.method, Method::Kcore);
    assert!(!b.job.source.digest);
    assert_eq!(c.job.source.method, Method::Lime);
    assert!(c.job.source.compress);
    assert!(!c.job.module.file().unwrap().bytes.is_empty());
}

#[test]
fn inline_passwords_need_the_opt_in() {
    let errors = check("hosts:\n  - addr: a\n    module: lime.ko\n    password: hunter2\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        errors.contains(":4:15: password written in the file"),
        "{errors}"
    );
    let plan = check(
        "allow_inline_passwords: true\nhosts:\n  - addr: a\n    module: lime.ko\n    password: hunter2\n",
    )
    .unwrap();
    assert_eq!(plan.warnings.len(), 1);
    assert!(!plan.warnings[0].contains("hunter2"));
}

#[test]
fn sudo_modes_are_inherited_and_the_password_source_is_named() {
    use crate::target::SudoMode;
    // PATH is always set; setting a variable here would race other test threads.
    let plan = check(
        "defaults: {module: lime.ko, sudo: never}\nhosts:\n  - {addr: a}\n  - {addr: b, sudo: auto, sudo_password_env: PATH}\n  - {addr: c, sudo: true}\n  - {addr: d, sudo: always}\n",
    )
    .unwrap();
    let modes: Vec<SudoMode> = plan.hosts.iter().map(|h| h.job.sudo.mode).collect();
    assert_eq!(
        modes,
        [
            SudoMode::Never,
            SudoMode::Auto,
            SudoMode::Always,
            SudoMode::Always
        ]
    );
    assert_eq!(
        plan.hosts[1].job.sudo.password_from.as_deref(),
        Some("sudo_password_env PATH")
    );
    assert!(plan.hosts[0].job.sudo.password_from.is_none());
    let default = check("hosts: [{addr: a, module: lime.ko}]\n").unwrap();
    assert_eq!(default.hosts[0].job.sudo.mode, SudoMode::Auto);
}

#[test]
fn shards_and_workers() {
    assert_eq!(parse_shard("2/5"), Ok((2, 5)));
    for bad in ["0/3", "4/3", "1", "a/b", "1/0"] {
        assert!(parse_shard(bad).is_err(), "{bad}");
    }
    assert_eq!(Workers::parse("auto"), Some(Workers::Auto));
    assert_eq!(Workers::parse("0"), None);
    assert_eq!(Workers::Count(8).resolve(3), 3);
    assert!(Workers::Auto.resolve(100) >= 4);
}

#[test]
fn the_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let plan = load(
        &path,
        &Overrides {
            skip_file_checks: true,
            ..Overrides::default()
        },
    );
    // Only unset secret variables may fail here: the example names them.
    if let Err(errors) = &plan {
        for e in &errors.errors {
            assert!(e.message.contains("environment variable"), "{}", errors);
        }
    }
}

#[test]
fn repository_supplies_modules_to_hosts_without_one() {
    let plan = check(
        "repository: {enabled: true, url: \"https://modules.example/lime\"}\nhosts:\n  - {addr: a}\n  - {addr: b, module: lime.ko}\n  - {addr: c, method: kcore}\n",
    )
    .unwrap();
    let [a, b, c] = &plan.hosts[..] else { panic!() };
    match &a.job.module {
        crate::capture::ModuleSource::Repository(spec) => {
            assert_eq!(spec.location.to_string(), "https://modules.example/lime/");
            assert_eq!(spec.key.origin, "built-in key");
        }
        crate::capture::ModuleSource::File(_) => panic!("a has no repository"),
    }
    // module: wins; kcore needs none.
    assert!(!b.job.module.file().unwrap().bytes.is_empty());
    assert!(c.job.module.file().unwrap().bytes.is_empty());

    for (text, expected) in [
        ("gpg_verify: false", "always verifies"),
        ("manifest: secondary", "one manifest"),
        (
            "url: \"https://x/\"\n  key: /nonexistent.pub",
            "neither a minisign public key",
        ),
        ("url: \"ftp://x/y\"", "not supported"),
    ] {
        let errors = check(&format!(
            "repository:\n  enabled: true\n  {text}\nhosts:\n  - {{addr: a}}\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("{text} accepted"))
        .to_string();
        assert!(errors.contains(expected), "{text}: {errors}");
    }
}
