//! `key=value` labels as commands take them and as the wire carries them.

use crate::pb;

/// `key=value` from a command line.
pub fn parse_label(s: &str) -> Result<pb::Label, String> {
    s.split_once('=')
        .map(|(k, v)| pb::Label {
            key: k.to_owned(),
            value: v.to_owned(),
        })
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

/// Every `key=value` of a command line, or the first that is not one.
pub fn parse_labels(items: &[String]) -> Result<Vec<pb::Label>, String> {
    items.iter().map(|s| parse_label(s)).collect()
}

/// Labels as stored (pairs) to their wire form.
pub fn to_pb(labels: &[(String, String)]) -> Vec<pb::Label> {
    labels
        .iter()
        .map(|(k, v)| pb::Label {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_or_a_clear_error() {
        let l = parse_label("building=b=2").expect("parses");
        assert_eq!((l.key.as_str(), l.value.as_str()), ("building", "b=2"));
        assert!(
            parse_labels(&["a=1".into(), "oops".into()])
                .expect_err("refused")
                .contains("\"oops\"")
        );
    }
}
