//! What a row is once it has left the CSV file.
//!
//! Third-party files name their columns every which way (`Email`, `E-mail`,
//! `Email Address`, `mail`…). [`ColumnMap`] finds the email and name columns by
//! comparing header names case- and punctuation-insensitively; every other
//! column is kept as an attribute.

use serde::{Deserialize, Serialize};

/// The canonical content of one data row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowFields {
    /// The email field as written (not yet validated).
    pub email: Option<String>,
    /// The name as written (a first + last name pair already joined).
    pub name: Option<String>,
    /// Every other column, by header name, in file order.
    pub attributes: Vec<(String, String)>,
}

impl RowFields {
    /// The row as one flat JSON object, `{"email": …, "name": …, <column>:
    /// …}`: the shape in which rowpipe hands a parsed row's fields back
    /// (reject ledger, dead letters, exports). A row the upload service
    /// rejected for its shape never became `RowFields`; its raw values
    /// travel as a JSON array instead.
    pub fn as_written_json(&self) -> String {
        let mut obj = serde_json::Map::new();
        if let Some(e) = &self.email {
            obj.insert("email".into(), e.clone().into());
        }
        if let Some(n) = &self.name {
            obj.insert("name".into(), n.clone().into());
        }
        for (k, v) in &self.attributes {
            obj.insert(k.clone(), v.clone().into());
        }
        serde_json::Value::Object(obj).to_string()
    }
}

/// Which positions of a record hold the email and the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    pub headers: Vec<String>,
    pub email: usize,
    pub name: NameColumns,
}

/// Where the name comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameColumns {
    None,
    Full(usize),
    FirstLast {
        first: Option<usize>,
        last: Option<usize>,
    },
}

/// `"E-mail Address"` → `"emailaddress"`: letters and digits only, lower case.
pub fn header_key(header: &str) -> String {
    header
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

const EMAIL_EXACT: &[&str] = &[
    "email",
    "emailaddress",
    "mail",
    "emailaddr",
    "mailaddress",
    "emailid",
    "electronicmail",
    "correo",
    "courriel",
    "epost",
];
const NAME_EXACT: &[&str] = &[
    "name",
    "fullname",
    "contactname",
    "displayname",
    "customername",
    "personname",
    "nom",
    "nombre",
];
const FIRST_EXACT: &[&str] = &["firstname", "givenname", "forename", "first", "fname"];
const LAST_EXACT: &[&str] = &["lastname", "surname", "familyname", "last", "lname"];

fn find(keys: &[String], wanted: &[&str]) -> Option<usize> {
    // Earlier entries of `wanted` win over later ones; within one, the first column.
    wanted.iter().find_map(|w| keys.iter().position(|k| k == w))
}

/// Why no column map could be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("no email column found; the file's columns are: {}", .0.join(", "))]
    NoEmailColumn(Vec<String>),
    #[error("column {0:?} was asked for but the file's columns are: {cols}", cols = .1.join(", "))]
    UnknownColumn(String, Vec<String>),
}

impl ColumnMap {
    /// Find the email and name columns among `headers`, unless the caller
    /// named them (`email_column`/`name_column`: a header name or a 1-based
    /// position).
    pub fn detect(
        headers: &[String],
        email_column: Option<&str>,
        name_column: Option<&str>,
    ) -> Result<Self, ColumnError> {
        let keys: Vec<String> = headers.iter().map(|h| header_key(h)).collect();
        let resolve = |wanted: &str| -> Result<usize, ColumnError> {
            if let Ok(n) = wanted.trim().parse::<usize>()
                && n >= 1
                && n <= headers.len()
            {
                return Ok(n - 1);
            }
            let key = header_key(wanted);
            keys.iter()
                .position(|k| *k == key)
                .ok_or_else(|| ColumnError::UnknownColumn(wanted.to_string(), headers.to_vec()))
        };
        let email = match email_column {
            Some(wanted) => resolve(wanted)?,
            None => find(&keys, EMAIL_EXACT)
                .or_else(|| keys.iter().position(|k| k.contains("email")))
                .ok_or_else(|| ColumnError::NoEmailColumn(headers.to_vec()))?,
        };
        let name = match name_column {
            Some(wanted) => NameColumns::Full(resolve(wanted)?),
            None => match find(&keys, NAME_EXACT) {
                Some(i) if i != email => NameColumns::Full(i),
                _ => {
                    let first = find(&keys, FIRST_EXACT).filter(|i| *i != email);
                    let last = find(&keys, LAST_EXACT).filter(|i| *i != email);
                    if first.is_none() && last.is_none() {
                        NameColumns::None
                    } else {
                        NameColumns::FirstLast { first, last }
                    }
                }
            },
        };
        Ok(Self {
            headers: headers.to_vec(),
            email,
            name,
        })
    }

    /// Positional columns for a file without a header row: `column_1`, ….
    pub fn positional_headers(count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("column_{i}")).collect()
    }

    fn is_name_column(&self, i: usize) -> bool {
        match self.name {
            NameColumns::None => false,
            NameColumns::Full(n) => n == i,
            NameColumns::FirstLast { first, last } => first == Some(i) || last == Some(i),
        }
    }

    /// Split a record (already checked to have `headers.len()` fields).
    pub fn split<S: AsRef<str>>(&self, record: &[S]) -> RowFields {
        let get = |i: usize| record.get(i).map(|s| s.as_ref().to_string());
        let name = match self.name {
            NameColumns::None => None,
            NameColumns::Full(i) => get(i),
            NameColumns::FirstLast { first, last } => {
                let parts: Vec<String> = [first, last]
                    .into_iter()
                    .flatten()
                    .filter_map(get)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if parts.is_empty() {
                    None
                } else {
                    Some(parts.join(" "))
                }
            }
        };
        let attributes = self
            .headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.email && !self.is_name_column(*i))
            .map(|(i, h)| (h.clone(), get(i).unwrap_or_default()))
            .collect();
        RowFields {
            email: get(self.email),
            name,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn email_column_is_found_whatever_its_spelling() {
        for header in [
            "email",
            "E-mail",
            "Email Address",
            "MAIL",
            "Work Email",
            "e_mail",
        ] {
            let map = ColumnMap::detect(&h(&["id", header]), None, None).expect(header);
            assert_eq!(map.email, 1, "{header}");
        }
    }

    #[test]
    fn first_and_last_names_are_joined_and_others_kept() {
        let map = ColumnMap::detect(
            &h(&["First Name", "Last Name", "Email", "Company"]),
            None,
            None,
        )
        .expect("map");
        let row = map.split(&["Zoë", "Müller", "z@example.com", "ACME"]);
        assert_eq!(row.name.as_deref(), Some("Zoë Müller"));
        assert_eq!(row.email.as_deref(), Some("z@example.com"));
        assert_eq!(row.attributes, vec![("Company".into(), "ACME".into())]);
    }

    #[test]
    fn a_file_without_an_email_column_names_the_columns_it_saw() {
        let err = ColumnMap::detect(&h(&["id", "phone"]), None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no email column found; the file's columns are: id, phone"
        );
    }

    #[test]
    fn callers_can_name_columns_by_header_or_position() {
        let map = ColumnMap::detect(&h(&["a", "b", "c"]), Some("3"), Some("a")).expect("map");
        assert_eq!(map.email, 2);
        assert_eq!(map.name, NameColumns::Full(0));
    }
}
