//! How figures print in the tables' cells and the progress log.

use crate::workloads::Load;

/// 1234567.8 -> "1,234,568".
pub fn group(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

pub(super) fn rate_unit(load: Load) -> &'static str {
    match load {
        Load::Echo { .. } | Load::Memory { .. } => "msg/s",
        Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. } => "deliveries/s",
        Load::Churn { .. } => "conn/s",
        Load::Handshake { .. } => "handshakes/s",
    }
}

pub(super) fn cpu_cell(load: Load, us: f64) -> String {
    if !us.is_finite() {
        return "-".into();
    }
    match load {
        Load::Echo { .. } | Load::Memory { .. } => format!("{us:.2} us/msg"),
        Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. } => {
            format!("{:.0} ns/delivery", us * 1000.0)
        }
        Load::Churn { .. } => format!("{us:.1} us/conn"),
        Load::Handshake { .. } => format!("{us:.1} us/handshake"),
    }
}

pub(super) fn kib(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1024.0 {
        format!("{:.1} MiB", v / 1024.0)
    } else {
        format!("{v:.0} KiB")
    }
}

pub(super) fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1234567.8), "1,234,568");
        assert_eq!(group(f64::NAN), "-");
    }
}
