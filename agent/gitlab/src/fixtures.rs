//! Job payloads exactly as GitLab sends them, from GitLab's own source: see
//! `fixtures/README.md` for the file each key and `null` comes from. Used by the decoder's
//! tests and by the fake GitLab in `tests/`, so neither can drift from GitLab's shape.
//! [`optional_paths`] and [`unset`] make every sparser payload GitLab may send from them.

use serde_json::Value;

/// The "picks a job" payload of `jobs_request_post_spec.rb`: every key of every entity.
pub const FULL: &str = include_str!("fixtures/full.json");
/// `artifacts: paths: [out/]` alone: `name`, `when`, `expire_in` are `null`.
pub const ARTIFACTS_UNSET: &str = include_str!("fixtures/artifacts_unset.json");
/// Everything GitLab may send as `null`, sent as `null`.
pub const SPARSE: &str = include_str!("fixtures/sparse.json");

/// Every fixture, with its file name.
pub const ALL: &[(&str, &str)] = &[
    ("full.json", FULL),
    ("artifacts_unset.json", ARTIFACTS_UNSET),
    ("sparse.json", SPARSE),
];

/// Every path of `v` that GitLab may leave unset (object keys and list elements), except
/// what no job can run without: `id`, `token`, a step or its `name`, a variable or its `key`.
pub fn optional_paths(v: &Value) -> Vec<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (k, child) in children {
            path.push(k);
            if !required(path) {
                out.push(path.clone());
            }
            walk(child, path, out);
            path.pop();
        }
    }
    fn required(p: &[String]) -> bool {
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        matches!(
            p.as_slice(),
            ["id"]
                | ["token"]
                | ["steps", _]
                | ["steps", _, "name"]
                | ["variables", _]
                | ["variables", _, "key"]
        )
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// `null` at `path`, or the key removed (list elements become `null`: a list has no absent
/// element). A path under something already removed changes nothing.
pub fn unset(root: &mut Value, path: &[String], remove: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = root;
    for p in parents {
        let next = match at {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return,
        }
    }
    match at {
        Value::Object(m) if remove => {
            m.remove(last);
        }
        Value::Object(m) => {
            if let Some(v) = m.get_mut(last) {
                *v = Value::Null;
            }
        }
        Value::Array(a) => {
            if let Some(v) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *v = Value::Null;
            }
        }
        _ => {}
    }
}
