//! Reading a configuration file in parts.
//!
//! The top-level table of a file holds the keys of a few parts side by side: the form's own keys
//! (where a UDP role listens, a gateway's interfaces), the role's settings (one struct shared by
//! its UDP and gateway forms) and, for a gateway, its data path. Each part is a struct with
//! `deny_unknown_fields`, read by toml from the keys it declares (as its derived `Deserialize`
//! names them), so every error points at its line. Before any part is read, every key is checked
//! against the keys of the file's form: a key no part declares is an error naming it and, if it
//! is a key of other forms, those.
//!
//! Why not `#[serde(flatten)]` (and `#[serde(tag = "role")]`): both buffer the values before the
//! struct sees them, so a bad value's error loses its line and its key (`invalid type: integer
//! `3`, expected a boolean`, but which?), and a flattened struct reports a missing key before an
//! unknown one.

use super::{Form, RoleName};
use serde::Deserialize as _;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor,
};
use std::fmt;
use toml::Spanned;
use toml::de::{DeTable, Error};

/// A parsed TOML file, read part by part.
pub(crate) struct Document<'i> {
    text: &'i str,
    table: Spanned<DeTable<'i>>,
}

impl<'i> Document<'i> {
    /// Parses `text` (TOML syntax only).
    pub(crate) fn parse(text: &'i str) -> Result<Self, Error> {
        Ok(Self {
            text,
            table: DeTable::parse(text)?,
        })
    }

    /// The parts `P` of a file of form `form`: every key is one of theirs (else an error naming
    /// the first such key), then each part is read in turn.
    pub(crate) fn parts<P: Parts>(&self, form: Form) -> Result<P, Error> {
        let keys = P::keys();
        let unknown = self
            .table
            .get_ref()
            .iter()
            .filter(|(k, _)| !keys.iter().any(|known| *known == k.get_ref()))
            .min_by_key(|(k, _)| k.span().start);
        if let Some((key, _)) = unknown {
            return Err(self.error_at(key.get_ref(), unknown_key(form, key.get_ref(), &keys)));
        }
        P::read(self)
    }

    /// Part `T`, read from the keys it declares.
    pub(crate) fn part<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let keys = keys::<T>();
        let table: DeTable<'i> = self
            .table
            .get_ref()
            .iter()
            .filter(|(k, _)| keys.iter().any(|known| *known == k.get_ref()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        T::deserialize(toml::de::Deserializer::from(Spanned::new(
            self.table.span(),
            table,
        )))
        .map_err(|e| self.with_text(e))
    }

    /// An error with `message` at top-level key `key` (shown with its line).
    fn error_at(&self, key: &str, message: String) -> Error {
        let table: DeTable<'i> = self
            .table
            .get_ref()
            .iter()
            .filter(|(k, _)| k.get_ref() == key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // toml gives an error raised while reading a key that key's position.
        let result = FailAtKey(message).deserialize(toml::de::Deserializer::from(Spanned::new(
            self.table.span(),
            table,
        )));
        self.with_text(match result {
            Err(e) => e,
            Ok(()) => de::Error::custom(format!("{key}: not found")),
        })
    }

    fn with_text(&self, mut e: Error) -> Error {
        e.set_input(Some(self.text));
        e
    }
}

/// Fails at the first key of a table, with its message.
struct FailAtKey(String);

impl<'de> DeserializeSeed<'de> for FailAtKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FailAtKey {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        map.next_key_seed(KeyError(self.0))?;
        Ok(())
    }
}

/// A key that fails to deserialize, with its message.
struct KeyError(String);

impl<'de> DeserializeSeed<'de> for KeyError {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        IgnoredAny::deserialize(d)?;
        Err(de::Error::custom(self.0))
    }
}

/// Struct parts read side by side from one table (tuples of up to five).
pub(crate) trait Parts: Sized {
    /// Every key of every part.
    fn keys() -> Vec<&'static str>;
    /// Reads each part.
    fn read(doc: &Document<'_>) -> Result<Self, Error>;
}

macro_rules! parts {
    ($($t:ident),+) => {
        impl<$($t: DeserializeOwned),+> Parts for ($($t,)+) {
            fn keys() -> Vec<&'static str> {
                [$(keys::<$t>()),+].concat()
            }
            fn read(doc: &Document<'_>) -> Result<Self, Error> {
                Ok(($(doc.part::<$t>()?,)+))
            }
        }
    };
}

parts!(A, B);
parts!(A, B, C);
parts!(A, B, C, D);
parts!(A, B, C, D, E);
parts!(A, B, C, D, E, F);

/// The keys of struct `T`: the field names its derived `Deserialize` passes to
/// `deserialize_struct` (renamed, skipped fields left out).
///
/// # Panics
/// `T` does not deserialize as a plain struct (with `#[serde(flatten)]` it asks for a map): a
/// part must name its keys. The unit tests read every form.
pub(crate) fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields.unwrap_or_else(|| {
        panic!(
            "{} is not a plain struct: a configuration part must name its keys",
            std::any::type_name::<T>()
        )
    })
}

/// The message for `key`, which form `form` (with `keys`) does not have: the forms that have
/// it (of the same family if any), or, for a key no form has, the key it may be a typo of or the
/// keys expected.
fn unknown_key(form: Form, key: &str, keys: &[&'static str]) -> String {
    let owners: Vec<Form> = Form::ALL
        .into_iter()
        .filter(|f| *f != form && f.keys().contains(&key))
        .collect();
    let same: Vec<Form> = owners
        .iter()
        .copied()
        .filter(|f| f.same_family(form))
        .collect();
    let owners = if same.is_empty() { owners } else { same };
    if !owners.is_empty() {
        return format!(
            "unknown field `{key}`: a key of {}, not of {}",
            describe(&owners, form),
            describe(&[form], form)
        );
    }
    // A typo: of one of this form's keys, or else of another's of the family.
    let nearest = |keys: &[&'static str]| {
        keys.iter()
            .map(|k| (distance(key, k), *k))
            .filter(|(d, k)| *d <= 3 && *d < k.len() / 3)
            .min()
            .map(|(_, k)| k)
    };
    if let Some(k) = nearest(keys) {
        return format!(
            "unknown field `{key}` in {}; did you mean `{k}`?",
            describe(&[form], form)
        );
    }
    let family: Vec<&'static str> = Form::ALL
        .into_iter()
        .filter(|f| f.same_family(form))
        .flat_map(Form::keys)
        .collect();
    if let Some(k) = nearest(&family) {
        let owners: Vec<Form> = Form::ALL
            .into_iter()
            .filter(|f| f.same_family(form) && f.keys().contains(&k))
            .collect();
        return format!(
            "unknown field `{key}` in {} ({} {} `{k}`)",
            describe(&[form], form),
            describe(&owners, form),
            if owners.len() == 1 { "has" } else { "have" }
        );
    }
    let expected: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    format!(
        "unknown field `{key}` in {}, expected one of {}",
        describe(&[form], form),
        expected.join(", ")
    )
}

/// Forms of one family as messages about a file of form `context` call them.
fn describe(forms: &[Form], context: Form) -> String {
    let roles: Vec<String> = forms
        .iter()
        .filter_map(|f| match f {
            Form::Gateway(role) => Some(format!("{:?}", role.as_str())),
            Form::Udp(_) => None,
        })
        .collect();
    if roles.is_empty() {
        let commands: Vec<String> = forms
            .iter()
            .filter_map(|f| match f {
                Form::Udp(role) => Some(format!("`pktcrypt {}`", role.as_str())),
                Form::Gateway(_) => None,
            })
            .collect();
        return and(&commands);
    }
    let roles = match roles.len() {
        1 => format!("role {}", roles[0]),
        _ => format!("roles {}", and(&roles)),
    };
    match context {
        Form::Gateway(_) => roles,
        Form::Udp(_) if forms.len() == RoleName::ALL.len() => "`pktcrypt up`".to_string(),
        Form::Udp(_) => format!("`pktcrypt up` ({roles})"),
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The edit distance (Levenshtein) between `a` and `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Form {
    fn same_family(self, other: Form) -> bool {
        matches!(
            (self, other),
            (Form::Udp(_), Form::Udp(_)) | (Form::Gateway(_), Form::Gateway(_))
        )
    }
}
