//! Dates and times as the protocol writes them, formatted by hand: chrono's `format` parses its
//! pattern for every value, and an initial sync writes millions of them. The output is exactly
//! chrono's for the same patterns (tested against it); values outside the everyday range
//! (years beyond 0–9999, leap seconds, sub-minute offsets) take chrono's path.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use std::fmt::Write;

fn two(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// `%Y-%m-%d`; false if the year needs chrono's signed form.
fn date(out: &mut String, d: &NaiveDate) -> bool {
    let y = d.year();
    if !(0..=9999).contains(&y) {
        return false;
    }
    let y = y as u32;
    two(out, y / 100);
    two(out, y % 100);
    out.push('-');
    two(out, d.month());
    out.push('-');
    two(out, d.day());
    true
}

/// `%H:%M:%S%.f` (the fraction in 3, 6 or 9 digits, none when zero); false for a leap second.
fn time(out: &mut String, t: &NaiveTime) -> bool {
    let ns = t.nanosecond();
    if ns >= 1_000_000_000 {
        return false;
    }
    two(out, t.hour());
    out.push(':');
    two(out, t.minute());
    out.push(':');
    two(out, t.second());
    match ns {
        0 => {}
        _ if ns.is_multiple_of(1_000_000) => fraction(out, ns / 1_000_000, 3),
        _ if ns.is_multiple_of(1_000) => fraction(out, ns / 1_000, 6),
        _ => fraction(out, ns, 9),
    }
    true
}

/// `.` and `n` in exactly `width` digits, zero-padded (`n` < 10^width).
fn fraction(out: &mut String, mut n: u32, width: usize) {
    let mut digits = [b'0'; 9];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.push('.');
    out.push_str(std::str::from_utf8(&digits[..width]).expect("ASCII digits"));
}

fn datetime(out: &mut String, ts: &NaiveDateTime) -> bool {
    let start = out.len();
    if date(out, &ts.date()) && {
        out.push('T');
        time(out, &ts.time())
    } {
        return true;
    }
    out.truncate(start);
    false
}

/// Writes `"YYYY-MM-DD"`.
pub fn write_date(out: &mut String, d: &NaiveDate) {
    out.push('"');
    if !date(out, d) {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
    }
    out.push('"');
}

/// Writes `"HH:MM:SS[.fff]"`.
pub fn write_time(out: &mut String, t: &NaiveTime) {
    out.push('"');
    if !time(out, t) {
        let _ = write!(out, "{}", t.format("%H:%M:%S%.f"));
    }
    out.push('"');
}

/// Writes `"YYYY-MM-DDTHH:MM:SS[.fff]"`.
pub fn write_timestamp(out: &mut String, ts: &NaiveDateTime) {
    out.push('"');
    if !datetime(out, ts) {
        let _ = write!(out, "{}", ts.format("%Y-%m-%dT%H:%M:%S%.f"));
    }
    out.push('"');
}

/// Writes `"YYYY-MM-DDTHH:MM:SS[.fff]+HH:MM"` (local time and its offset).
pub fn write_timestamp_tz(out: &mut String, ts: &DateTime<FixedOffset>) {
    out.push('"');
    let offset = ts.offset().local_minus_utc();
    let start = out.len();
    if offset % 60 == 0 && datetime(out, &ts.naive_local()) {
        out.push(if offset < 0 { '-' } else { '+' });
        let m = offset.unsigned_abs() / 60;
        two(out, m / 60);
        out.push(':');
        two(out, m % 60);
    } else {
        out.truncate(start);
        let _ = write!(out, "{}", ts.format("%Y-%m-%dT%H:%M:%S%.f%:z"));
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_as_chrono() {
        let dates = [
            (2024, 2, 29),
            (1, 1, 1),
            (0, 12, 31),
            (9999, 12, 31),
            (10000, 1, 1),
            (-44, 3, 15),
            (1970, 1, 1),
        ];
        let nanos = [0, 1, 999_999_999, 5_000_000, 120_000, 123_456_789, 1_000, 1_500_000_000];
        let offsets = [0, 3600, -3600 * 5 - 1800, 14 * 3600, -12 * 3600, 45, -7];
        for (y, m, d) in dates {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let mut s = String::new();
            write_date(&mut s, &date);
            assert_eq!(s, format!("\"{}\"", date.format("%Y-%m-%d")));
            for ns in nanos {
                let t = NaiveTime::from_hms_nano_opt(23, 59, 59, ns).unwrap();
                let mut s = String::new();
                write_time(&mut s, &t);
                assert_eq!(s, format!("\"{}\"", t.format("%H:%M:%S%.f")));
                let ts = date.and_time(t);
                let mut s = String::new();
                write_timestamp(&mut s, &ts);
                assert_eq!(s, format!("\"{}\"", ts.format("%Y-%m-%dT%H:%M:%S%.f")));
                for off in offsets {
                    let Some(tz) = FixedOffset::east_opt(off).and_then(|o| ts.and_local_timezone(o).single()) else {
                        continue;
                    };
                    let mut s = String::new();
                    write_timestamp_tz(&mut s, &tz);
                    assert_eq!(s, format!("\"{}\"", tz.format("%Y-%m-%dT%H:%M:%S%.f%:z")), "{tz:?}");
                }
            }
        }
    }
}
