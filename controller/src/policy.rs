//! Policy documents: YAML an admin applies with `shoal-controller apply -f`,
//! validated in full before anything is stored, and resolved per agent into
//! the effective [`pb::Policy`] its session pushes.
//!
//! A file holds one or more documents separated by `---` lines:
//!
//! ```yaml
//! name: lab-b-daytime
//! target: {groups: [lab-b], labels: {building: b}}   # any of; or all: true
//! priority: 10
//! limits: {upload_rate: 50Mbit/s, download_rate: 200Mbit/s,
//!          max_concurrent_downloads: 2, upload_slots: 4, cache_quota: 50GiB}
//! schedule:
//!   - {days: [mon, tue], from: "08:00", to: "18:00", upload_rate: 10Mbit/s}
//! trusted_publishers: ['ed25519:…']
//! allowed_peer_groups: [lab-b]
//! ```
//!
//! A document targets an agent when `all` is true, when the agent is in one
//! of its groups, or when the agent carries every one of its labels. Where
//! several target the same agent, each field comes from the document with
//! the highest priority that sets it (ties: the lexically smaller name).
//! Errors name the document, the field and the line.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_proto::identity::validate_label;
use shoal_proto::pb;
use shoal_proto::signing::PublicKey;
use shoal_proto::units::{parse_rate, parse_size};

use crate::state::AgentRecord;

/// One problem in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {doc} ({name}), field {field}, line {line}: {message}")]
pub struct FieldError {
    /// 1-based position of the document in the file.
    pub doc: usize,
    pub name: String,
    pub field: String,
    /// 1-based line in the whole file.
    pub line: usize,
    pub message: String,
}

/// Why a policy file was refused; nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the file holds no policy documents")]
    Empty,
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A byte count or rate: a number (bytes, bytes per second) or a string
/// with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Number(n) => n.to_string(),
            Quantity::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    name: String,
    target: RawTarget,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    limits: RawLimits,
    schedule: Option<Vec<RawWindow>>,
    trusted_publishers: Option<Vec<String>>,
    allowed_peer_groups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    upload_rate: Option<Quantity>,
    download_rate: Option<Quantity>,
    max_concurrent_downloads: Option<u32>,
    upload_slots: Option<u32>,
    cache_quota: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Vec<String>,
    from: String,
    to: String,
    upload_rate: Option<Quantity>,
    download_rate: Option<Quantity>,
}

/// A rate window, validated: minutes after midnight, ISO weekdays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub weekdays: Vec<u32>,
    pub start_minute: u32,
    pub end_minute: u32,
    pub upload_rate: u64,
    pub download_rate: u64,
}

/// A validated document, as stored. `None` = the document does not set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    pub name: String,
    pub all: bool,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub upload_rate: Option<u64>,
    pub download_rate: Option<u64>,
    pub max_concurrent_downloads: Option<u32>,
    pub upload_slots: Option<u32>,
    pub cache_quota: Option<u64>,
    pub schedule: Option<Vec<Window>>,
    pub trusted_publishers: Option<Vec<String>>,
    pub allowed_peer_groups: Option<Vec<String>>,
}

/// One document of a file: its own text and what it says.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub yaml: String,
    pub doc: PolicyDoc,
}

/// One document's text and the file line it starts on (0-based).
struct Chunk {
    text: String,
    first_line: usize,
}

fn split_documents(input: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut cur = Chunk {
        text: String::new(),
        first_line: 0,
    };
    for (i, line) in input.lines().enumerate() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            chunks.push(std::mem::replace(
                &mut cur,
                Chunk {
                    text: String::new(),
                    first_line: i,
                },
            ));
            // Content after the marker stays on its line and column.
            cur.text.push_str(&format!("   {}\n", &line[3..]));
        } else {
            cur.text.push_str(line);
            cur.text.push('\n');
        }
    }
    chunks.push(cur);
    chunks
        .into_iter()
        .filter(|c| {
            c.text.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#') && t != "..."
            })
        })
        .collect()
}

/// Line (1-based, within `text`) of the first `key:` whose line also holds
/// `value`, else of the first `key:`, else 1.
fn line_of(text: &str, key: &str, value: Option<&str>) -> usize {
    let pat = format!("{key}:");
    let has_key = |l: &str| {
        l.match_indices(&pat).any(|(i, _)| {
            i == 0 || !l.as_bytes()[i - 1].is_ascii_alphanumeric() && l.as_bytes()[i - 1] != b'_'
        })
    };
    let lines: Vec<&str> = text.lines().collect();
    value
        .and_then(|v| {
            lines
                .iter()
                .position(|l| has_key(l) && l.contains(v))
                .or_else(|| lines.iter().position(|l| l.contains(v)))
        })
        .or_else(|| lines.iter().position(|l| has_key(l)))
        .map_or(1, |i| i + 1)
}

/// Collects the errors of one document.
struct Check<'a> {
    doc: usize,
    name: String,
    chunk: &'a Chunk,
    errors: Vec<FieldError>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, key: &str, value: Option<&str>, message: impl Into<String>) {
        self.errors.push(FieldError {
            doc: self.doc,
            name: self.name.clone(),
            field: field.to_owned(),
            line: self.chunk.first_line + line_of(&self.chunk.text, key, value),
            message: message.into(),
        });
    }

    fn rate(&mut self, field: &str, key: &str, q: &Option<Quantity>) -> Option<u64> {
        let text = q.as_ref()?.text();
        match parse_rate(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(field, key, Some(&text), e.to_string());
                None
            }
        }
    }

    fn group(&mut self, field: &str, key: &str, g: &str, known: &BTreeSet<String>) {
        if let Err(e) = validate_label("group", g) {
            self.fail(field, key, Some(g), e.to_string());
        } else if !known.contains(g) {
            self.fail(
                field,
                key,
                Some(g),
                format!("unknown group {g:?}: no enrolled agent is in it"),
            );
        }
    }
}

fn weekday(d: &str) -> Option<u32> {
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let d = d.trim().to_ascii_lowercase();
    days.iter()
        .position(|x| *x == d)
        .or_else(|| full.iter().position(|x| *x == d))
        .map(|i| i as u32 + 1)
}

/// "HH:MM" into minutes after midnight; "24:00" is allowed (end of day).
fn minute_of_day(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= 24 * 60).then_some(total)
}

fn validate(raw: RawDoc, check: &mut Check<'_>, known: &BTreeSet<String>) -> PolicyDoc {
    if let Err(e) = validate_label("policy name", &raw.name) {
        check.fail("name", "name", None, e.to_string());
    }
    let t = &raw.target;
    if !t.all && t.groups.is_empty() && t.labels.is_empty() {
        check.fail(
            "target",
            "target",
            None,
            "targets no agent: give groups, labels or all: true",
        );
    }
    for g in &t.groups {
        check.group("target.groups", "groups", g, known);
    }
    for k in t.labels.keys() {
        if k.trim().is_empty() {
            check.fail("target.labels", "labels", None, "a label key is empty");
        }
    }
    let l = &raw.limits;
    let upload_rate = check.rate("limits.upload_rate", "upload_rate", &l.upload_rate);
    let download_rate = check.rate("limits.download_rate", "download_rate", &l.download_rate);
    let cache_quota = l.cache_quota.as_ref().and_then(|q| {
        let text = q.text();
        parse_size(&text)
            .map_err(|e| {
                check.fail(
                    "limits.cache_quota",
                    "cache_quota",
                    Some(&text),
                    e.to_string(),
                )
            })
            .ok()
    });
    for (field, v) in [
        ("max_concurrent_downloads", l.max_concurrent_downloads),
        ("upload_slots", l.upload_slots),
    ] {
        if v == Some(0) {
            check.fail(
                &format!("limits.{field}"),
                field,
                None,
                "must be at least 1",
            );
        }
    }
    let schedule = raw.schedule.as_ref().map(|windows| {
        windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let field = |f: &str| format!("schedule[{i}].{f}");
                let mut weekdays = Vec::new();
                for d in &w.days {
                    match weekday(d) {
                        Some(n) => weekdays.push(n),
                        None => check.fail(
                            &field("days"),
                            "days",
                            Some(d),
                            format!("{d:?} is not a weekday (mon, tue, … sun)"),
                        ),
                    }
                }
                weekdays.sort_unstable();
                weekdays.dedup();
                let from = minute_of_day(&w.from);
                let to = minute_of_day(&w.to);
                if from.is_none() {
                    check.fail(&field("from"), "from", Some(&w.from), "expected HH:MM");
                }
                if to.is_none() {
                    check.fail(&field("to"), "to", Some(&w.to), "expected HH:MM");
                }
                if from.is_some() && from == to {
                    check.fail(&field("to"), "to", Some(&w.to), "the window is empty");
                }
                if w.upload_rate.is_none() && w.download_rate.is_none() {
                    check.fail(
                        &field("from"),
                        "from",
                        Some(&w.from),
                        "the window sets neither upload_rate nor download_rate",
                    );
                }
                let up = check.rate(&field("upload_rate"), "upload_rate", &w.upload_rate);
                let down = check.rate(&field("download_rate"), "download_rate", &w.download_rate);
                Some(Window {
                    weekdays,
                    start_minute: from? % (24 * 60),
                    end_minute: to?,
                    upload_rate: up.unwrap_or(0),
                    download_rate: down.unwrap_or(0),
                })
            })
            .collect()
    });
    if let Some(keys) = &raw.trusted_publishers {
        for k in keys {
            if let Err(e) = k.parse::<PublicKey>() {
                check.fail(
                    "trusted_publishers",
                    "trusted_publishers",
                    Some(k),
                    e.to_string(),
                );
            }
        }
    }
    if let Some(groups) = &raw.allowed_peer_groups {
        for g in groups {
            check.group("allowed_peer_groups", "allowed_peer_groups", g, known);
        }
    }
    PolicyDoc {
        name: raw.name,
        all: t.all,
        groups: t.groups.clone(),
        labels: t.labels.clone(),
        priority: raw.priority,
        upload_rate,
        download_rate,
        max_concurrent_downloads: l.max_concurrent_downloads,
        upload_slots: l.upload_slots,
        cache_quota,
        schedule,
        trusted_publishers: raw.trusted_publishers,
        allowed_peer_groups: raw.allowed_peer_groups,
    }
}

/// The document's `name`, read loosely, for messages about a document
/// that does not parse.
fn loose_name(text: &str) -> String {
    serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unnamed".into())
}

/// Parses and validates every document of `input`. `known_groups` are the
/// groups a target or `allowed_peer_groups` may name. All or nothing: any
/// error refuses the whole file.
pub fn parse(input: &str, known_groups: &BTreeSet<String>) -> Result<Vec<Parsed>, PolicyError> {
    let chunks = split_documents(input);
    if chunks.is_empty() {
        return Err(PolicyError::Empty);
    }
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let doc = i + 1;
        let raw: RawDoc = match serde_yaml::from_str(&chunk.text) {
            Ok(r) => r,
            Err(e) => {
                let (line, message) = match e.location() {
                    Some(loc) => {
                        let mut m = e.to_string();
                        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                        if let Some(stripped) = m.strip_suffix(&suffix) {
                            m = stripped.to_owned();
                        }
                        (
                            chunk.first_line + loc.line(),
                            format!("{m} (column {})", loc.column()),
                        )
                    }
                    None => (chunk.first_line + 1, e.to_string()),
                };
                errors.push(FieldError {
                    doc,
                    name: loose_name(&chunk.text),
                    field: yaml_field(&message),
                    line,
                    message,
                });
                continue;
            }
        };
        let mut check = Check {
            doc,
            name: raw.name.clone(),
            chunk,
            errors: Vec::new(),
        };
        if !names.insert(raw.name.clone()) {
            check.fail(
                "name",
                "name",
                None,
                "another document of the file has this name",
            );
        }
        let parsed = validate(raw, &mut check, known_groups);
        errors.append(&mut check.errors);
        out.push(Parsed {
            yaml: chunk.text.trim_matches('\n').to_owned(),
            doc: parsed,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyError::Invalid(errors))
    }
}

/// The field a serde_yaml message is about, where it says (`unknown field
/// `x``, `missing field `x``, `duplicate field `x``); else "-".
fn yaml_field(message: &str) -> String {
    ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| {
            let rest = &message[message.find(p)? + p.len()..];
            Some(rest[..rest.find('`')?].to_owned())
        })
        .unwrap_or_else(|| "-".into())
}

/// Whether `doc` targets `agent`.
pub fn targets(doc: &PolicyDoc, agent: &AgentRecord) -> bool {
    doc.all
        || doc.groups.iter().any(|g| agent.groups.contains(g))
        || (!doc.labels.is_empty()
            && doc
                .labels
                .iter()
                .all(|(k, v)| agent.labels.iter().any(|(ak, av)| ak == k && av == v)))
}

/// The effective policy of `agent`: per field, the value of the targeting
/// document with the highest priority that sets it.
pub fn effective(docs: &[PolicyDoc], agent: &AgentRecord, version: u64) -> pb::Policy {
    let mut mine: Vec<&PolicyDoc> = docs.iter().filter(|d| targets(d, agent)).collect();
    mine.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    fn first<T: Clone>(docs: &[&PolicyDoc], f: impl Fn(&PolicyDoc) -> Option<T>) -> Option<T> {
        docs.iter().find_map(|d| f(d))
    }
    let schedule = first(&mine, |d| d.schedule.clone()).unwrap_or_default();
    pb::Policy {
        version,
        upload_rate: first(&mine, |d| d.upload_rate).unwrap_or(0),
        download_rate: first(&mine, |d| d.download_rate).unwrap_or(0),
        schedule: schedule
            .into_iter()
            .map(|w| pb::RateWindow {
                start_minute: w.start_minute,
                end_minute: w.end_minute,
                weekdays: w.weekdays,
                upload_rate: w.upload_rate,
                download_rate: w.download_rate,
            })
            .collect(),
        max_concurrent_downloads: first(&mine, |d| d.max_concurrent_downloads).unwrap_or(0),
        upload_slots: first(&mine, |d| d.upload_slots).unwrap_or(0),
        cache_quota_bytes: first(&mine, |d| d.cache_quota).unwrap_or(0),
        trusted_publishers: first(&mine, |d| d.trusted_publishers.clone()).unwrap_or_default(),
        allowed_peer_groups: first(&mine, |d| d.allowed_peer_groups.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
