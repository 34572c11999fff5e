//! The offline `clear` command: the issue's book shape in, the report shape out, and exit
//! code 2 with a clear message for invalid books.

use std::io::Write;
use std::process::{Command, Stdio};

fn clear(book: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_market-engine"))
        .args(["clear", "--book", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(book.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const BOOK: &str = r#"{"network":{"root":"sub","branches":[{"node":"f1","parent":"sub","import_limit_wh":50000,"export_limit_wh":30000,"fee_per_mwh":0}],"utility":{"retail_price":30000,"feed_in_price":8000}},"orders":[{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000},{"id":"s1","side":"sell","node":"f1","quantity_wh":2000,"limit_price":12000}]}"#;

#[test]
fn clears_the_issue_book_shape() {
    let (code, stdout, stderr) = clear(BOOK);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // b1 fills from s1; s1 asks more than the feed-in price, so its other 800 Wh stay unsold
    // and, partly filled, it sets the price.
    assert_eq!(
        v["orders"][0],
        serde_json::json!({"id": "b1", "cleared_wh": 1200})
    );
    assert_eq!(
        v["orders"][1],
        serde_json::json!({"id": "s1", "cleared_wh": 1200})
    );
    assert_eq!(v["prices"]["sub"], 12000);
    assert_eq!(v["prices"]["f1"], 12000);
    assert_eq!(
        v["utility"],
        serde_json::json!({"import_wh": 0, "export_wh": 0})
    );
    assert_eq!(
        v["flows"],
        serde_json::json!([{"node": "f1", "flow_wh": 0}])
    );
    assert_eq!(
        v["trades"],
        serde_json::json!([{"buy": "b1", "sell": "s1", "wh": 1200, "price": 12000}])
    );
    assert_eq!(v["welfare"], 16); // (25000 − 12000) × 1200 / 1e6 = 15.6 → 16
}

#[test]
fn invalid_books_exit_2_with_a_reason() {
    let cases = [
        (
            BOOK.replace(
                "\"node\":\"f1\",\"quantity_wh\":1200",
                "\"node\":\"f7\",\"quantity_wh\":1200",
            ),
            "not in the network",
        ),
        (
            BOOK.replace("\"quantity_wh\":1200", "\"quantity_wh\":-1200"),
            "quantity -1200",
        ),
        (BOOK.replace("\"root\":\"sub\",", ""), "root"),
        (
            BOOK.replace("\"parent\":\"sub\"", "\"parent\":\"f1\""),
            "cycle",
        ),
        ("not json".to_owned(), "not valid JSON"),
    ];
    for (book, reason) in cases {
        let (code, stdout, stderr) = clear(&book);
        assert_eq!(code, 2, "{book}");
        assert!(stdout.is_empty());
        assert!(
            stderr.starts_with("error: ") && stderr.contains(reason),
            "{stderr}"
        );
    }
}
