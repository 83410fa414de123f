//! The typo table (`fixtures/mail_domain_typos.tsv`): every typo of a common
//! mail domain or TLD gets its suggestion, and no correct domain gets one.

use rowpipe_core::suggest::suggest_domain;

#[test]
fn every_labelled_domain_gets_its_expected_suggestion_and_correct_ones_none() {
    let table = include_str!("fixtures/mail_domain_typos.tsv");
    let (mut typos, mut correct) = (0, 0);
    let mut failures = Vec::new();
    for (i, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("written\t") || line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "line {} has {} columns", i + 1, cols.len());
        let expected = (cols[1] != "-").then_some(cols[1]);
        match cols[2] {
            "typo" => typos += 1,
            "correct" => {
                assert!(
                    expected.is_none(),
                    "line {}: a correct domain expects none",
                    i + 1
                );
                correct += 1
            }
            other => panic!("line {}: kind {other:?}", i + 1),
        }
        let got = suggest_domain(cols[0]);
        if got.as_deref() != expected {
            failures.push(format!(
                "line {}: {:?} ({}) expected {:?}, got {:?}",
                i + 1,
                cols[0],
                cols[2],
                expected,
                got
            ));
        }
    }
    assert!(
        typos >= 40 && correct >= 40,
        "{typos} typos, {correct} correct"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
