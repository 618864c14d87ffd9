//! Sizes as settings and rule files write them: `1048576`, `512KiB`, `64MiB`, `1GiB`.

/// Formats a byte count the way rule files write it: `64MiB`, `512KiB`, `1GiB`.
pub fn format(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        0 => "0B".to_owned(),
        b if b % GIB == 0 => format!("{}GiB", b / GIB),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % KIB == 0 => format!("{}KiB", b / KIB),
        b => format!("{b}B"),
    }
}

/// Parses a memory size: `67108864` (bytes), `512KiB`, `64MiB`, `1GiB`; `KB`, `MB`, `GB`
/// (and `K`, `M`, `G`) are the same binary units.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 64MiB, 512KiB or 1GiB, found {text:?}"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "expected a size unit of KiB, MiB or GiB, found {:?}",
                unit.trim()
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("the size {text:?} is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse(" 512 KiB ").unwrap(), 512 << 10);
        assert_eq!(parse("1GB").unwrap(), 1 << 30);
        assert_eq!(parse("1048576").unwrap(), 1 << 20);
        assert!(parse("lots").is_err());
        assert!(parse("5TB").unwrap_err().contains("KiB, MiB or GiB"));
        assert!(parse("99999999999999GiB").is_err());
        assert_eq!(format(256 << 20), "256MiB");
        assert_eq!(format(3 << 30), "3GiB");
        assert_eq!(format(1536), "1536B");
        assert_eq!(format(1000), "1000B");
    }
}
