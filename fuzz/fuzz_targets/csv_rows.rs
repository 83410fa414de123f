//! Fuzz the CSV row path: raw upload bytes → intake rows → field validation
//! → stream entry encode/decode.
//!
//! The first input byte picks the intake options; the rest is the file.
//!   bits 0..=5  chunk size - 1 (1..=64 bytes per `push`)
//!   bit 6       has_header
//!   bit 7       force a delimiter (`,` `;` tab `|`, chosen by bits 4..=5)
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use redis::Value;
use rowpipe_core::stream::{EntryBody, StreamEntry};
use rowpipe_core::validate::{EmailPolicy, validate_email, validate_name};
use rowpipe_upload::intake::{IntakeOptions, read_all};

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

const POLICIES: [EmailPolicy; 2] = [
    EmailPolicy {
        allow_ip_literal: false,
        allow_quoted_local_part: false,
    },
    EmailPolicy {
        allow_ip_literal: true,
        allow_quoted_local_part: true,
    },
];

fn check_email(raw: &str) {
    for policy in POLICIES {
        let Ok(valid) = validate_email(raw, policy) else {
            continue;
        };
        match validate_email(&valid.normalized, policy) {
            Ok(again) => assert_eq!(
                again.normalized, valid.normalized,
                "normalization is not idempotent for {raw:?} ({policy:?})"
            ),
            Err(r) => panic!(
                "{raw:?} is accepted as {:?} but that form is rejected ({policy:?}): {r:?}",
                valid.normalized
            ),
        }
    }
}

fn check_round_trip(entry: &StreamEntry) {
    let map: HashMap<String, Value> = entry
        .to_fields()
        .into_iter()
        .map(|(k, v)| {
            (
                k.into_owned(),
                Value::BulkString(v.into_owned().into_bytes()),
            )
        })
        .collect();
    let back = StreamEntry::from_map(&map)
        .unwrap_or_else(|e| panic!("to_fields output does not decode: {e} ({entry:?})"));
    assert_eq!(back.upload_id, entry.upload_id);
    assert_eq!(back.row_number, entry.row_number);
    match (&entry.body, &back.body) {
        (EntryBody::Row(sent), EntryBody::Row(got)) => {
            assert_eq!(got.email, sent.email, "email changed on the wire");
            assert_eq!(got.name, sent.name, "name changed on the wire");
        }
        (EntryBody::Rejected { .. }, EntryBody::Rejected { .. }) => {}
        (sent, got) => panic!("entry body kind changed on the wire: {sent:?} -> {got:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(opts & 0x3f) + 1;
    let options = IntakeOptions {
        has_header: opts & 0x40 != 0,
        delimiter: (opts & 0x80 != 0).then(|| DELIMITERS[usize::from((opts >> 4) & 3)]),
        ..IntakeOptions::default()
    };
    let Ok((rows, _intake)) = read_all(body, options, chunk) else {
        return; // a refused file is a fine outcome; a panic is not
    };
    for row in rows {
        if let EntryBody::Row(fields) = &row.body {
            if let Some(email) = &fields.email {
                check_email(email);
            }
            let _ = validate_name(fields.name.as_deref());
        }
        check_round_trip(&StreamEntry {
            upload_id: "fuzz-upload".to_string(),
            row_number: row.row_number,
            body: row.body,
            trace: Vec::new(),
        });
    }
});
