//! Quoted literals and identifiers read back by a real server as the text
//! they quote, under either `standard_conforming_strings`.

use pg_connect::{quote_ident, quote_literal};

const TEXTS: &[&str] = &[
    "plain",
    "it's",
    "''",
    "back\\slash",
    "\\",
    "both ' and \\ and \\'",
    "ünï\tcode\n",
    "",
];

#[test]
fn literals_mean_their_text_whatever_standard_conforming_strings_is() {
    let db = pg_testkit::cluster().create_database("quote");
    let mut client = db.client();
    for setting in ["on", "off"] {
        client
            .batch_execute(&format!(
                "SET standard_conforming_strings = {setting}; SET escape_string_warning = off"
            ))
            .unwrap();
        for text in TEXTS {
            let sql = format!("SELECT {}::text", quote_literal(text));
            let got: String = client.query_one(&sql, &[]).unwrap().get(0);
            assert_eq!(&got, text, "standard_conforming_strings = {setting}: {sql}");
        }
    }
}

#[test]
fn identifiers_name_exactly_their_text() {
    let db = pg_testkit::cluster().create_database("quote_ident");
    let mut client = db.client();
    for name in ["Order", "a\"b", "with space", "back\\slash", "select"] {
        let sql = format!("SELECT 1 AS {}", quote_ident(name));
        let row = client.query_one(&sql, &[]).unwrap();
        assert_eq!(row.columns()[0].name(), name, "{sql}");
    }
}
