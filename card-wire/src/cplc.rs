//! Card Production Life Cycle data (CPLC, GET DATA `9F7F`): 42 bytes in 18 fixed fields
//! (GlobalPlatform Card Specification, and the Visa GlobalPlatform Card Implementation
//! Requirements that define it), decoded into names, hex values and ISO dates.
//!
//! A CPLC date is `YDDD` in BCD: the last digit of the year, then the day of the year. The
//! decade is not recorded, so decoding needs a reference day: kagi takes the latest year
//! ending in `Y` whose day `DDD` is not after the reference day — the date is assumed to lie
//! within the ten years before it (a card read in 2026 with `8165` was made on 2018-06-14,
//! not in 2028). `0000`, `FFFF` and anything that is not BCD or not a day of that year
//! decode to no date; the raw value is kept.

use serde::Serialize;
use thiserror::Error;

/// Bytes of CPLC data without its tag and length.
pub const CPLC_LEN: usize = 42;

/// Why CPLC data could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CplcError {
    /// Fewer bytes than the 42 of the 18 fields.
    #[error(
        "CPLC data of {0} bytes is too short: it has 42 bytes (after tag 9F7F and length 2A); \
         the card's GET DATA 9F7F answer may be truncated"
    )]
    TooShort(usize),
}

/// The 18 CPLC fields: JSON name and length in bytes, in card order.
pub const FIELDS: [(&str, usize); 18] = [
    ("ic_fabricator", 2),
    ("ic_type", 2),
    ("os_id", 2),
    ("os_release_date", 2),
    ("os_release_level", 2),
    ("ic_fabrication_date", 2),
    ("ic_serial_number", 4),
    ("ic_batch_id", 2),
    ("ic_module_fabricator", 2),
    ("ic_module_packaging_date", 2),
    ("icc_manufacturer", 2),
    ("ic_embedding_date", 2),
    ("ic_pre_personalizer", 2),
    ("ic_pre_perso_equipment_date", 2),
    ("ic_pre_perso_equipment_id", 4),
    ("ic_personalizer", 2),
    ("ic_personalization_date", 2),
    ("ic_perso_equipment_id", 4),
];

/// A day, as the reference for CPLC dates: the year and the day of that year (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayOfYear {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Day of the year, 1..=366.
    pub day: u16,
}

impl DayOfYear {
    /// The day `days` after 1970-01-01 (a Unix timestamp divided by 86 400, UTC).
    pub fn from_unix_days(days: i64) -> DayOfYear {
        let (year, month, dom) = civil_from_days(days);
        let day = (1..month).map(|m| month_len(year, m)).sum::<u16>() + dom as u16;
        DayOfYear { year, day }
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_len(y: i32, m: u32) -> u16 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    // Eras of 400 years (146 097 days) starting on 0000-03-01.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

/// Decodes a CPLC date `YDDD` relative to `today` (see the module notes); `None` when the
/// value is no date.
pub fn decode_date(raw: [u8; 2], today: DayOfYear) -> Option<String> {
    if raw == [0, 0] || raw == [0xFF, 0xFF] {
        return None;
    }
    let digits = [raw[0] >> 4, raw[0] & 0x0F, raw[1] >> 4, raw[1] & 0x0F];
    if digits.iter().any(|d| *d > 9) {
        return None;
    }
    let y = i32::from(digits[0]);
    let day = u16::from(digits[1]) * 100 + u16::from(digits[2]) * 10 + u16::from(digits[3]);
    let mut year = today.year - (today.year - y).rem_euclid(10);
    if year == today.year && day > today.day {
        year -= 10;
    }
    let days_in_year = if is_leap(year) { 366 } else { 365 };
    if day == 0 || day > days_in_year {
        return None;
    }
    let (mut month, mut rest) = (1u32, day);
    while rest > month_len(year, month) {
        rest -= month_len(year, month);
        month += 1;
    }
    Some(format!("{year:04}-{month:02}-{rest:02}"))
}

/// One CPLC field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CplcField {
    /// The field's name (`ic_fabricator`, `ic_fabrication_date`, …).
    pub name: &'static str,
    /// Its bytes, upper-case hex.
    pub hex: String,
    /// For a date field: the ISO date, or `None` when the value is no date. Always `None`
    /// for other fields.
    pub date: Option<String>,
}

/// Decoded CPLC data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cplc {
    /// The 18 fields in card order.
    pub fields: Vec<CplcField>,
}

impl Cplc {
    /// The field `name`, if there is one by that name.
    pub fn field(&self, name: &str) -> Option<&CplcField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Decodes CPLC data: the 42 bytes, or a GET DATA answer `9F7F 2A …`; dates relative to
/// `today`. Bytes past the 42 are ignored (some cards pad the answer).
pub fn parse_cplc(data: &[u8], today: DayOfYear) -> Result<Cplc, CplcError> {
    let body = match data {
        [0x9F, 0x7F, 0x2A, rest @ ..] => rest,
        other => other,
    };
    if body.len() < CPLC_LEN {
        return Err(CplcError::TooShort(body.len()));
    }
    let mut at = 0;
    let fields = FIELDS
        .iter()
        .map(|(name, len)| {
            let v = &body[at..at + len];
            at += len;
            let date = match (name.ends_with("_date"), v) {
                (true, [a, b]) => decode_date([*a, *b], today),
                _ => None,
            };
            CplcField {
                name,
                hex: hex::encode_upper(v),
                date,
            }
        })
        .collect();
    Ok(Cplc { fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEC_4_2026: DayOfYear = DayOfYear {
        year: 2026,
        day: 338,
    };

    #[test]
    fn unix_days() {
        // 2026-12-04 is day 338 of 2026 and 20 791 days after 1970-01-01 (Python:
        // (date(2026,12,4) - date(1970,1,1)).days, date(2026,12,4).timetuple().tm_yday).
        assert_eq!(DayOfYear::from_unix_days(20_791), DEC_4_2026);
        assert_eq!(
            DayOfYear::from_unix_days(0),
            DayOfYear { year: 1970, day: 1 }
        );
        // 2024-12-31, a leap year's last day: 20 088 days, day 366.
        assert_eq!(
            DayOfYear::from_unix_days(20_088),
            DayOfYear {
                year: 2024,
                day: 366
            }
        );
    }

    #[test]
    fn published_cplc() {
        // A Fidesmo (NXP) card's GET DATA 9F7F answer from the test suite of fidesmo/fdsm
        // (src/test/java/com/fidesmo/fdsm/FidesmoCardTest.java, testOldStorageAppletSupport).
        // Field boundaries from the CPLC layout (GlobalPlatformPro's CPLC.Field lists the
        // same lengths); dates computed with Python's datetime: date(2018,1,1) + 164 days.
        let answer = hex::decode(
            "9F7F2A47906B644700E4D80300816500485399064800000000000000005758594E4E4E4E4E\
             0000000000000000",
        )
        .unwrap();
        let c = parse_cplc(&answer, DEC_4_2026).unwrap();
        let get = |n: &str| c.field(n).unwrap().clone();
        assert_eq!(get("ic_fabricator").hex, "4790");
        assert_eq!(get("ic_type").hex, "6B64");
        assert_eq!(get("os_id").hex, "4700");
        assert_eq!(get("os_release_level").hex, "0300");
        assert_eq!(get("ic_serial_number").hex, "00485399");
        assert_eq!(get("ic_batch_id").hex, "0648");
        assert_eq!(get("ic_pre_personalizer").hex, "5758");
        assert_eq!(get("ic_pre_perso_equipment_id").hex, "4E4E4E4E");
        // 8165: year ending in 8, day 165 → 2018-06-14 seen from 2026.
        assert_eq!(
            get("ic_fabrication_date").date.as_deref(),
            Some("2018-06-14")
        );
        // E4D8 is not BCD: no date, the raw value kept.
        let os_date = get("os_release_date");
        assert_eq!((os_date.hex.as_str(), os_date.date), ("E4D8", None));
        // 0000: no date.
        assert_eq!(get("ic_embedding_date").date, None);
        // 594E (pre-perso equipment date) is not BCD either.
        assert_eq!(get("ic_pre_perso_equipment_date").date, None);
        assert_eq!(c.fields.len(), 18);
        assert_eq!(
            parse_cplc(&answer[..20], DEC_4_2026),
            Err(CplcError::TooShort(17))
        );
    }

    #[test]
    fn decade_assumption() {
        // Expected dates from Python: date(Y,1,1) + timedelta(DDD - 1).
        // The same year, a day already past: this year.
        assert_eq!(
            decode_date([0x60, 0x01], DEC_4_2026).as_deref(),
            Some("2026-01-01")
        );
        // The same year digit, a day still to come: ten years back.
        assert_eq!(
            decode_date([0x63, 0x50], DEC_4_2026).as_deref(),
            Some("2016-12-15")
        );
        // A later year digit: the previous decade (2027 has not happened).
        assert_eq!(
            decode_date([0x70, 0x60], DEC_4_2026).as_deref(),
            Some("2017-03-01")
        );
        // Day 366 exists only in leap years: 2024 yes, 2023 no.
        assert_eq!(
            decode_date([0x43, 0x66], DEC_4_2026).as_deref(),
            Some("2024-12-31")
        );
        assert_eq!(decode_date([0x33, 0x66], DEC_4_2026), None);
        assert_eq!(decode_date([0x30, 0x00], DEC_4_2026), None);
        assert_eq!(decode_date([0xFF, 0xFF], DEC_4_2026), None);
    }

    proptest! {
        #[test]
        fn cplc_never_panics(b in proptest::collection::vec(any::<u8>(), 0..60), year in 1900i32..2200, day in 1u16..=366) {
            let today = DayOfYear { year, day };
            match parse_cplc(&b, today) {
                Ok(c) => prop_assert_eq!(c.fields.len(), 18),
                Err(CplcError::TooShort(n)) => prop_assert!(n < CPLC_LEN),
            }
        }

        #[test]
        fn dates_are_never_after_today_nor_ten_years_before(y in 0u8..10, ddd in 1u16..=366, days in 0i64..80_000) {
            let today = DayOfYear::from_unix_days(days);
            let bcd = |v: u16| (v / 100) as u8 * 16 + ((v / 10) % 10) as u8;
            let raw = [y << 4 | bcd(ddd) >> 4, (bcd(ddd) & 0x0F) << 4 | (ddd % 10) as u8];
            let Some(d) = decode_date(raw, today) else {
                // Only day 366 of a year that is not a leap year is no date.
                prop_assert_eq!(ddd, 366);
                return Ok(());
            };
            let year: i32 = d[..4].parse().unwrap();
            prop_assert!(year <= today.year && year > today.year - 11, "{} from {:?}", d, today);
            prop_assert!(year < today.year || ddd <= today.day, "{} from {:?}", d, today);
            prop_assert_eq!(year.rem_euclid(10), i32::from(y));
        }
    }
}
