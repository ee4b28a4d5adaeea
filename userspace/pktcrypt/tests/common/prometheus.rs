//! A strict reader of the Prometheus text format (version 0.0.4), for the tests of the metrics
//! endpoint (also built into the binary's unit tests). Every line must be a `# HELP`, a
//! `# TYPE` or a sample; every family has its HELP, then its TYPE, then its samples, together
//! and once; names, labels (escapes included), values and timestamps follow the format's
//! grammar; no series twice; counters are finite, not negative, and named `..._total`; every
//! family is `pktcrypt_...`. The text is also read by the `prometheus-parse` crate, which must
//! find the same samples with the same values and types (it skips what it cannot read, hence
//! the strict pass).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    /// Its name.
    pub(crate) name: String,
    /// Its labels, in order.
    pub(crate) labels: LabelPairs,
    /// Its value.
    pub(crate) value: f64,
}

/// A checked scrape.
#[derive(Debug)]
pub(crate) struct Scrape {
    /// Every sample, in order.
    pub(crate) samples: Vec<Sample>,
    /// Family name → type.
    pub(crate) types: HashMap<String, String>,
    /// Family name → help.
    pub(crate) help: HashMap<String, String>,
}

impl Scrape {
    /// The value of the one sample called `name` whose labels include `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// Every counter series: (name, labels).
    pub(crate) fn counters(&self) -> Vec<(String, LabelPairs)> {
        self.samples
            .iter()
            .filter(|s| self.types.get(&s.name).is_some_and(|t| t == "counter"))
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect()
    }

    /// The samples called `name`.
    pub(crate) fn named(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Label names and values, in order.
type LabelPairs = Vec<(String, String)>;

/// `{a="x",b="y"}` at the start of `s` (after the name): the labels and the rest.
fn labels(s: &str) -> Result<(LabelPairs, &str), String> {
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((Vec::new(), s));
    };
    let mut out: LabelPairs = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let eq = rest.find('=').ok_or("a label without '='")?;
        let name = &rest[..eq];
        if !label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name}: value not quoted"));
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("label {name}: bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err(format!("label {name}: raw newline")),
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("after label {name}: expected ',' or '}}'"));
        }
    }
}

/// The family a sample name belongs to, given the families' types.
fn family_of<'a>(name: &'a str, current: Option<(&str, &str)>) -> Option<&'a str> {
    let (family, kind) = current?;
    if name == family {
        return Some(name);
    }
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .any(|s| name.strip_suffix(s) == Some(family))
        .then_some(name)
}

/// Checks `text` strictly and against `prometheus-parse`.
pub(crate) fn check(text: &str) -> Result<Scrape, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut help: HashMap<String, String> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            if !metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if doc.trim().is_empty() {
                return Err(at(format!("{name}: empty help")));
            }
            if help.contains_key(name) || done.contains(name) {
                return Err(at(format!("{name}: a second HELP")));
            }
            if let Some((family, _)) = current.take() {
                done.insert(family);
            }
            help.insert(name.to_string(), doc.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| at("no type".into()))?;
            if !help.contains_key(name) {
                return Err(at(format!("{name}: TYPE before HELP")));
            }
            if types.contains_key(name) {
                return Err(at(format!("{name}: a second TYPE")));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("{name}: unknown type {kind}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at(format!("counter {name} is not named ..._total")));
            }
            if !name.starts_with("pktcrypt_") {
                return Err(at(format!("{name} is not pktcrypt_...")));
            }
            types.insert(name.to_string(), kind.to_string());
            current = Some((name.to_string(), kind.to_string()));
        } else if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("neither HELP, TYPE nor a sample".into()));
        } else {
            let end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
            let name = &line[..end];
            if !metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            family_of(
                name,
                current.as_ref().map(|(f, k)| (f.as_str(), k.as_str())),
            )
            .ok_or_else(|| at(format!("{name}: not in the family above (HELP and TYPE)")))?;
            let (labels, rest) = labels(&line[end..]).map_err(at)?;
            let rest = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("no space before the value".into()))?;
            let mut fields = rest.split(' ');
            let value = fields
                .next()
                .and_then(float)
                .ok_or_else(|| at("bad value".into()))?;
            if let Some(ts) = fields.next()
                && ts.parse::<i64>().is_err()
            {
                return Err(at("bad timestamp".into()));
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let kind = current.as_ref().map_or("", |(_, k)| k.as_str());
            if kind == "counter" && !(value.is_finite() && value >= 0.0) {
                return Err(at(format!("counter {name} = {value}")));
            }
            let mut key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            key.sort();
            if !series.insert(format!("{name}{{{}}}", key.join(","))) {
                return Err(at("a series twice".into()));
            }
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    for name in help.keys() {
        if !types.contains_key(name) {
            return Err(format!("{name}: HELP without TYPE"));
        }
    }
    // An independent reader must see the same.
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("prometheus-parse: {e}"))?;
    if parsed.samples.len() != samples.len() {
        return Err(format!(
            "prometheus-parse read {} samples, the strict reader {}",
            parsed.samples.len(),
            samples.len()
        ));
    }
    for (p, s) in parsed.samples.iter().zip(&samples) {
        let (kind, v) = match p.value {
            prometheus_parse::Value::Counter(v) => ("counter", v),
            prometheus_parse::Value::Gauge(v) => ("gauge", v),
            prometheus_parse::Value::Untyped(v) => ("untyped", v),
            _ => ("other", f64::NAN),
        };
        let same_value = v == s.value || (v.is_nan() && s.value.is_nan());
        if p.metric != s.name || !same_value || Some(&kind.to_string()) != types.get(&s.name) {
            return Err(format!(
                "prometheus-parse read {} = {v} ({kind}) where the strict reader read {} = {}",
                p.metric, s.name, s.value
            ));
        }
        // prometheus-parse splits labels at ',' and '=' and does not unescape: compare the
        // values it can read.
        let plain = |v: &str| !v.contains(['\\', '"', ',', '=', '}', '\n']);
        for (k, val) in s.labels.iter().filter(|(_, v)| plain(v)) {
            if p.labels.get(k) != Some(val.as_str()) {
                return Err(format!(
                    "prometheus-parse read label {k} of {} as {:?}, not {val:?}",
                    s.name,
                    p.labels.get(k)
                ));
            }
        }
    }
    Ok(Scrape {
        samples,
        types,
        help,
    })
}
