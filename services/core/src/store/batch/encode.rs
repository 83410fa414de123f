//! How a batch's values travel to the database: bound one by one in a
//! multi-row `VALUES` list (every dialect), or packed into one text
//! parameter per column (PostgreSQL, [`PackedColumns`]).

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe};

use crate::store::Dialect;

/// Rows per multi-row statement: well under every dialect's bind limit
/// (PostgreSQL and MySQL 65,535; SQLite 32,766) at 8 binds a row.
pub(super) const CHUNK: usize = 1000;

/// `(?, ?), (?, ?)`: placeholders for `rows` rows of `cols` values,
/// numbered across rows where the dialect numbers them.
pub(super) fn values_clause(dialect: Dialect, rows: usize, cols: usize, sql: &mut String) {
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            dialect.placeholder(n, sql);
        }
        sql.push(')');
    }
}

/// `INSERT INTO {table_and_cols} VALUES …` for `rows` rows of `cols` values.
pub(super) fn insert_sql(
    dialect: Dialect,
    table_and_cols: &str,
    rows: usize,
    cols: usize,
) -> String {
    let mut sql = dialect.sql(&format!("INSERT INTO {table_and_cols} VALUES "));
    values_clause(dialect, rows, cols, &mut sql);
    sql
}

/// One value of a row to insert, for either form a batch is sent in: packed
/// into a column parameter ([`PackedColumns`]) or bound in a `VALUES` list.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cell<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

impl<'a> Cell<'a> {
    pub(super) fn text_or_null(value: Option<&'a str>) -> Self {
        value.map_or(Cell::Null, Cell::Text)
    }

    /// Bind this value as the query's next parameter.
    fn bind<'q>(self, q: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments>
    where
        'a: 'q,
    {
        match self {
            Cell::Text(v) => q.bind(v),
            Cell::Int(v) => q.bind(v),
            Cell::Null => q.bind(None::<&str>),
        }
    }
}

/// `sql` with every cell of `rows` bound in order.
pub(super) fn bind_rows<'q, const N: usize>(
    sql: String,
    rows: &[[Cell<'q>; N]],
) -> Query<'q, Any, AnyArguments> {
    rows.iter()
        .flatten()
        .fold(sqlx::query(AssertSqlSafe(sql)), |q, cell| cell.bind(q))
}

/// A PostgreSQL batch as one text parameter per column, which
/// `string_to_array($n, chr(30), chr(31))` splits back: values separated by
/// the record separator (U+001E), NULL written as the unit separator
/// (U+001F). Splitting costs PostgreSQL far less than parsing the same rows
/// as JSON.
///
/// Validated text never holds control characters (the email policy rejects
/// them, names lose them, attributes are JSON-escaped), but entries from
/// other producers might, and an empty value cannot be told from an empty
/// column: then [`PackedColumns::finish`] says no and the batch goes as a
/// plain multi-row `VALUES` statement, the form the other dialects use.
pub(super) struct PackedColumns {
    columns: Vec<String>,
    rows: usize,
    usable: bool,
}

impl PackedColumns {
    pub(super) const SEPARATOR: char = '\u{1e}';
    const NULL: char = '\u{1f}';

    pub(super) fn new(columns: usize) -> Self {
        Self {
            columns: vec![String::new(); columns],
            rows: 0,
            usable: true,
        }
    }

    pub(super) fn push_row(&mut self, cells: &[Cell<'_>]) {
        use std::fmt::Write;
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            if self.rows > 0 {
                column.push(Self::SEPARATOR);
            }
            match *cell {
                Cell::Text(v) => {
                    if v.is_empty() || v.contains([Self::SEPARATOR, Self::NULL]) {
                        self.usable = false;
                    }
                    column.push_str(v);
                }
                // Writing into a String cannot fail.
                Cell::Int(v) => {
                    let _ = write!(column, "{v}");
                }
                Cell::Null => column.push(Self::NULL),
            }
        }
        self.rows += 1;
    }

    /// The parameters, or `None` when the plain `VALUES` form must be used.
    pub(super) fn finish(self) -> Option<Vec<String>> {
        (self.usable && self.rows > 0).then_some(self.columns)
    }

    /// SQL for the `n`th parameter as a text array.
    pub(super) fn split(n: usize) -> String {
        format!("string_to_array(${n}, chr(30), chr(31))")
    }

    /// `unnest(…)` over parameters `$1..` in this order, one per column
    /// type (`text` as is, anything else cast, e.g. `bigint`).
    pub(super) fn unnest(types: &[&str]) -> String {
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| match *t {
                "text" => Self::split(i + 1),
                t => format!("{}::{t}[]", Self::split(i + 1)),
            })
            .collect();
        format!("unnest({})", arrays.join(", "))
    }

    /// `sql` with the packed columns bound as its first parameters.
    pub(super) fn query<'q>(sql: String, columns: Vec<String>) -> Query<'q, Any, AnyArguments> {
        columns
            .into_iter()
            .fold(sqlx::query(AssertSqlSafe(sql)), |q, c| q.bind(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_columns_separate_values_and_mark_nulls() {
        let mut p = PackedColumns::new(2);
        p.push_row(&[Cell::Text("a@x.org"), Cell::Null]);
        p.push_row(&[Cell::Text("b@x.org"), Cell::Text("{\"k\":\"v\"}")]);
        assert_eq!(
            p.finish(),
            Some(vec![
                "a@x.org\u{1e}b@x.org".to_string(),
                "\u{1f}\u{1e}{\"k\":\"v\"}".to_string()
            ])
        );
    }

    #[test]
    fn packed_columns_unnest_casts_all_but_text() {
        assert_eq!(
            PackedColumns::unnest(&["text", "bigint"]),
            "unnest(string_to_array($1, chr(30), chr(31)), string_to_array($2, chr(30), chr(31))::bigint[])"
        );
    }

    #[test]
    fn packed_columns_refuse_what_they_cannot_carry() {
        for odd in ["", "a\u{1e}b", "\u{1f}"] {
            let mut p = PackedColumns::new(1);
            p.push_row(&[Cell::Text("fine")]);
            p.push_row(&[Cell::Text(odd)]);
            assert_eq!(p.finish(), None, "{odd:?}");
        }
        assert_eq!(PackedColumns::new(1).finish(), None, "no rows");
    }

    #[test]
    fn values_clauses_number_postgres_placeholders_across_rows() {
        let mut sql = String::new();
        values_clause(Dialect::Postgres, 2, 3, &mut sql);
        assert_eq!(sql, "($1, $2, $3), ($4, $5, $6)");
        let mut sql = String::new();
        values_clause(Dialect::MySql, 2, 2, &mut sql);
        assert_eq!(sql, "(?, ?), (?, ?)");
    }
}
