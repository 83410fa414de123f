//! Generated contact files, and the oracle of what loading them must leave.
//!
//! The files are reproducible from a seed and mix in the cases the
//! first-row-wins rule has to get right: duplicates far apart, duplicates
//! differing only in case, invalid addresses. The oracle computes the
//! expected table with the same normalization the consumer uses, so a test
//! compares whole tables instead of sampling rows.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};

/// A generated contacts file and what a correct load of it must contain.
pub struct Generated {
    pub csv: Vec<u8>,
    /// Normalized emails of the valid rows.
    pub distinct: BTreeSet<String>,
    pub rows: usize,
    pub invalid: usize,
    /// The email field of each row, in file order.
    pub emails: Vec<String>,
}

impl Generated {
    /// What the table must hold after loading `files` in this order: for each
    /// normalized email, the (file index, row number) of its first row.
    pub fn oracle(files: &[&Generated]) -> BTreeMap<String, (usize, i64)> {
        let mut out = BTreeMap::new();
        for (f, file) in files.iter().enumerate() {
            for (i, raw) in file.emails.iter().enumerate() {
                if let Some(key) = rowpipe_core::validate::normalize_email(raw, Default::default())
                {
                    out.entry(key).or_insert((f, i as i64 + 1));
                }
            }
        }
        out
    }
}

/// `rows` rows of `name,email` with about `dup_percent`% duplicate emails
/// (some differing only in case, repeated far apart) and about
/// `invalid_percent`% invalid addresses, reproducible from `seed`.
pub fn generate_contacts(
    rows: usize,
    dup_percent: u32,
    invalid_percent: u32,
    seed: u64,
) -> Generated {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut csv = String::from("name,email\n");
    let mut emails: Vec<String> = Vec::new();
    let mut distinct = BTreeSet::new();
    let mut invalid = 0;
    let mut all = Vec::with_capacity(rows);
    for i in 0..rows {
        let roll = rng.random_range(0..100);
        let (name, email) = if roll < invalid_percent {
            invalid += 1;
            let bad = match i % 4 {
                0 => format!("user{i}.example.com"),
                1 => format!("user{i}@@example.com"),
                2 => format!("user {i}@example.com"),
                _ => format!("user{i}@localhost"),
            };
            (format!("Bad {i}"), bad)
        } else if roll < invalid_percent + dup_percent && !emails.is_empty() {
            let e = emails[rng.random_range(0..emails.len())].clone();
            let e = if i % 2 == 0 { e.to_uppercase() } else { e };
            (format!("\"Dup, {i}\""), e)
        } else {
            let e = format!(
                "person{i}.{}@example{}.com",
                rng.random_range(0..1000),
                i % 7
            );
            emails.push(e.clone());
            distinct.insert(e.to_lowercase());
            (format!("Person {i}"), e)
        };
        csv.push_str(&name);
        csv.push(',');
        csv.push_str(&email);
        csv.push('\n');
        all.push(email);
    }
    Generated {
        csv: csv.into_bytes(),
        distinct,
        rows,
        invalid,
        emails: all,
    }
}

/// A `name,email` file of `rows` data rows whose row `open_at` opens a
/// quote it never closes (the rest are plain `Person N,pN@example.com`).
pub fn file_with_an_unclosed_quote(rows: usize, open_at: usize) -> Vec<u8> {
    let mut f = String::from("name,email\n");
    for r in 1..=rows {
        if r == open_at {
            f.push_str(&format!("\"Unclosed {r},u{r}@example.com\n"));
        } else {
            f.push_str(&format!("Person {r},p{r}@example.com\n"));
        }
    }
    f.into_bytes()
}
