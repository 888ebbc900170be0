use super::*;

fn known() -> BTreeSet<String> {
    ["lab-b", "slow", "fast"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn agent(groups: &[&str], labels: &[(&str, &str)]) -> AgentRecord {
    AgentRecord {
        agent_id: "a".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        hostname: "a".into(),
        serial: String::new(),
        cert_expires_ms: 0,
        enrolled_ms: 0,
        revoked: None,
        fingerprint: String::new(),
        addrs: Vec::new(),
    }
}

fn errors(input: &str) -> Vec<FieldError> {
    match parse(input, &known()) {
        Err(PolicyError::Invalid(e)) => e,
        other => panic!("expected errors, got {other:?}"),
    }
}

const FULL: &str = "\
name: lab-b-daytime
target: {groups: [lab-b], labels: {building: b}}
priority: 10
limits: {upload_rate: 50Mbit/s, download_rate: 200Mbit/s, max_concurrent_downloads: 2, upload_slots: 4, cache_quota: 50GiB}
schedule: [{days: [mon,tue,wed,thu,fri], from: \"08:00\", to: \"18:00\", upload_rate: 10Mbit/s, download_rate: 50Mbit/s}]
allowed_peer_groups: [lab-b]
";

#[test]
fn parses_a_full_document() {
    let docs = parse(FULL, &known()).expect("valid");
    assert_eq!(docs.len(), 1);
    let d = &docs[0].doc;
    assert_eq!(d.name, "lab-b-daytime");
    assert_eq!(d.upload_rate, Some(50_000_000 / 8));
    assert_eq!(d.download_rate, Some(200_000_000 / 8));
    assert_eq!(d.cache_quota, Some(50 << 30));
    assert_eq!(d.max_concurrent_downloads, Some(2));
    let w = &d.schedule.as_ref().expect("schedule")[0];
    assert_eq!(
        (w.start_minute, w.end_minute, w.weekdays.clone()),
        (480, 1080, vec![1, 2, 3, 4, 5])
    );
    assert_eq!(w.upload_rate, 10_000_000 / 8);
}

#[test]
fn several_documents_and_line_numbers() {
    let input = "\
name: one
target: {groups: [slow]}
---
# second
name: two
target: {groups: [fast]}
limits:
  upload_rate: fast-please
";
    let e = errors(input);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].doc, e[0].name.as_str()), (2, "two"));
    assert_eq!(e[0].field, "limits.upload_rate");
    assert_eq!(e[0].line, 8);
    let text = e[0].to_string();
    assert!(
        text.starts_with("document 2 (two), field limits.upload_rate, line 8:"),
        "{text}"
    );
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    let input = "name: x\ntarget: {groups: [slow]}\nlimits:\n  uplod_rate: 1Mbit/s\n";
    let e = errors(input);
    assert_eq!(e[0].field, "uplod_rate", "{e:?}");
    assert_eq!(e[0].line, 4, "{e:?}");
    assert!(e[0].message.contains("unknown field"), "{e:?}");
}

#[test]
fn unknown_groups_keys_and_times_are_refused() {
    let input = "\
name: x
target: {groups: [nope]}
schedule:
  - {days: [mon, funday], from: \"25:00\", to: \"18:00\", upload_rate: 1Mbit/s}
trusted_publishers: ['ed25519:zz']
allowed_peer_groups: [ghost]
";
    let e = errors(input);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "target.groups",
            "schedule[0].days",
            "schedule[0].from",
            "trusted_publishers",
            "allowed_peer_groups"
        ]
    );
    assert!(e[0].message.contains("unknown group \"nope\""), "{e:?}");
    assert_eq!(e[0].line, 2);
    assert_eq!(e[1].line, 4);
    assert_eq!(e[3].line, 5);
    assert_eq!(e[4].line, 6);
}

#[test]
fn empty_input_and_no_target() {
    assert_eq!(
        parse("# nothing\n", &known()).err(),
        Some(PolicyError::Empty)
    );
    let e = errors("name: x\ntarget: {}\n");
    assert_eq!(e[0].field, "target");
    let e = errors("name: x\nname: y\n");
    assert_eq!(e[0].field, "name", "{e:?}");
}

#[test]
fn duplicate_names_in_one_file() {
    let e = errors("name: x\ntarget: {all: true}\n---\nname: x\ntarget: {all: true}\n");
    assert_eq!((e[0].doc, e[0].field.as_str(), e[0].line), (2, "name", 4));
}

fn doc(name: &str, priority: i32, groups: &[&str], labels: &[(&str, &str)]) -> PolicyDoc {
    PolicyDoc {
        name: name.into(),
        all: false,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        priority,
        upload_rate: None,
        download_rate: None,
        max_concurrent_downloads: None,
        upload_slots: None,
        cache_quota: None,
        schedule: None,
        trusted_publishers: None,
        allowed_peer_groups: None,
    }
}

#[test]
fn targeting_by_group_labels_and_all() {
    let a = agent(&["lab-b"], &[("building", "b"), ("floor", "2")]);
    assert!(targets(&doc("g", 0, &["lab-b"], &[]), &a));
    assert!(!targets(&doc("g", 0, &["lab-c"], &[]), &a));
    assert!(targets(&doc("l", 0, &[], &[("building", "b")]), &a));
    assert!(!targets(
        &doc("l", 0, &[], &[("building", "b"), ("floor", "3")]),
        &a
    ));
    let mut all = doc("all", 0, &[], &[]);
    assert!(!targets(&all, &a));
    all.all = true;
    assert!(targets(&all, &a));
}

#[test]
fn higher_priority_wins_per_field() {
    let a = agent(&["lab-b"], &[("building", "b")]);
    let mut low = doc("low", 1, &["lab-b"], &[]);
    low.upload_rate = Some(100);
    low.download_rate = Some(200);
    low.cache_quota = Some(5);
    let mut high = doc("high", 10, &[], &[("building", "b")]);
    high.upload_rate = Some(7);
    let mut other = doc("other", 99, &["lab-c"], &[]);
    other.download_rate = Some(1);
    let p = effective(&[low, high, other], &a, 4);
    assert_eq!(p.version, 4);
    assert_eq!(p.upload_rate, 7, "high wins");
    assert_eq!(p.download_rate, 200, "only low sets it");
    assert_eq!(p.cache_quota_bytes, 5);
    assert_eq!(p.max_concurrent_downloads, 0, "unset");
}

#[tokio::test]
async fn stored_all_at_once_with_a_new_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = crate::state::State::open(dir.path()).expect("open");
    assert_eq!(state.policy_version().expect("version"), 0);
    let docs: Vec<_> = parse(FULL, &known())
        .expect("valid")
        .into_iter()
        .map(|p| (p.yaml, p.doc))
        .collect();
    assert_eq!(state.apply_policies(&docs).await.expect("apply"), 1);
    assert_eq!(state.apply_policies(&docs).await.expect("apply"), 2);
    let stored = state.policy("lab-b-daytime").expect("get").expect("stored");
    assert_eq!(stored.version, 2);
    assert!(stored.yaml.starts_with("name: lab-b-daytime"));
    assert_eq!(state.policies().expect("all").len(), 1);
}
