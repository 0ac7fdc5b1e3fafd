//! What a repository costs on S3: a price table per storage class, and the
//! arithmetic of a monthly bill and of reading everything back.
//!
//! The built-in table is AWS's list prices for `us-east-1` (see
//! [`Prices::aws`], and `docs/s3.md`, "What it costs", which gives the same
//! table); other regions and other stores differ, so a person can replace
//! any class's prices with a file of their own (`stats --cost --prices
//! FILE`). The estimates count what the repository really holds: every
//! object, its size, and its storage class as the store lists it.

use std::collections::BTreeMap;

use crate::backend::{RetrievalTier, is_archive_class};

/// Bytes per GB as S3 bills them (a binary gigabyte).
pub const GB: f64 = (1u64 << 30) as f64;

/// Prices of one storage class.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPrices {
    /// Per GB stored for a month.
    pub storage_per_gb_month: f64,
    /// Per 1,000 PUT requests (uploads, and restore requests).
    pub put_per_1000: f64,
    /// Per 1,000 GET requests.
    pub get_per_1000: f64,
    /// Per GB read (the IA classes and Glacier Instant Retrieval).
    #[serde(default)]
    pub read_per_gb: f64,
    /// Smaller objects are billed as this size.
    #[serde(default)]
    pub min_object_bytes: u64,
    /// An object deleted sooner is billed for the rest of this many days.
    #[serde(default)]
    pub min_days: u32,
    /// Bytes of metadata billed per object at this class's rate, and at
    /// STANDARD's (Glacier and Deep Archive: 32 KiB and 8 KiB).
    #[serde(default)]
    pub overhead_bytes: u64,
    #[serde(default)]
    pub overhead_standard_bytes: u64,
    /// Per 1,000 objects a month (Intelligent-Tiering's monitoring fee,
    /// charged for objects of 128 KiB and more).
    #[serde(default)]
    pub monitoring_per_1000_objects_month: f64,
    /// Archive classes: what a restore request costs, per tier.
    #[serde(default)]
    pub restore: BTreeMap<RetrievalTier, TierPrices>,
}

/// What bringing an archived object back costs, and how long it takes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPrices {
    pub per_gb: f64,
    /// Per 1,000 restore requests.
    pub per_1000: f64,
    /// How long the store takes, as it says (e.g. "5-12 hours").
    pub time: String,
}

/// A whole price table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Whose prices, where and when.
    pub source: String,
    pub currency: String,
    /// Per GB downloaded out of the store's network (a restore to a
    /// machine at home).
    pub transfer_out_per_gb: f64,
    /// Keyed by class name in upper case (`STANDARD`, `DEEP_ARCHIVE`).
    pub classes: BTreeMap<String, ClassPrices>,
}

/// A file of prices that replace some of the table's (see [`Prices::merge`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverrides {
    pub source: Option<String>,
    pub currency: Option<String>,
    pub transfer_out_per_gb: Option<f64>,
    #[serde(default)]
    pub classes: BTreeMap<String, ClassPrices>,
}

fn class(storage: f64, put: f64, get: f64) -> ClassPrices {
    ClassPrices {
        storage_per_gb_month: storage,
        put_per_1000: put,
        get_per_1000: get,
        read_per_gb: 0.0,
        min_object_bytes: 0,
        min_days: 0,
        overhead_bytes: 0,
        overhead_standard_bytes: 0,
        monitoring_per_1000_objects_month: 0.0,
        restore: BTreeMap::new(),
    }
}

fn tier(per_gb: f64, per_1000: f64, time: &str) -> TierPrices {
    TierPrices { per_gb, per_1000, time: time.into() }
}

impl Prices {
    /// AWS S3 list prices in `us-east-1` (USD), as published in 2025; the
    /// table in `docs/s3.md` is this one.
    pub fn aws() -> Prices {
        let mut classes = BTreeMap::new();
        classes.insert("STANDARD".into(), class(0.023, 0.005, 0.0004));
        let ia = |storage| ClassPrices {
            read_per_gb: 0.01,
            min_object_bytes: 128 << 10,
            min_days: 30,
            ..class(storage, 0.01, 0.001)
        };
        classes.insert("STANDARD_IA".into(), ia(0.0125));
        classes.insert("ONEZONE_IA".into(), ia(0.01));
        classes.insert(
            "INTELLIGENT_TIERING".into(),
            ClassPrices { monitoring_per_1000_objects_month: 0.0025, ..class(0.023, 0.005, 0.0004) },
        );
        classes.insert(
            "GLACIER_IR".into(),
            ClassPrices { read_per_gb: 0.03, min_object_bytes: 128 << 10, min_days: 90, ..class(0.004, 0.02, 0.01) },
        );
        let archive = |storage, put, min_days, restore| ClassPrices {
            min_days,
            overhead_bytes: 32 << 10,
            overhead_standard_bytes: 8 << 10,
            restore,
            ..class(storage, put, 0.0004)
        };
        classes.insert(
            "GLACIER".into(),
            archive(
                0.0036,
                0.03,
                90,
                BTreeMap::from([
                    (RetrievalTier::Bulk, tier(0.0, 0.0, "5-12 hours")),
                    (RetrievalTier::Standard, tier(0.01, 0.05, "3-5 hours")),
                    (RetrievalTier::Expedited, tier(0.03, 10.0, "1-5 minutes")),
                ]),
            ),
        );
        classes.insert(
            "DEEP_ARCHIVE".into(),
            archive(
                0.00099,
                0.05,
                180,
                BTreeMap::from([
                    (RetrievalTier::Bulk, tier(0.0025, 0.025, "within 48 hours")),
                    (RetrievalTier::Standard, tier(0.02, 0.10, "within 12 hours")),
                ]),
            ),
        );
        Prices {
            source: "AWS S3 list prices, us-east-1, 2025 (https://aws.amazon.com/s3/pricing/)".into(),
            currency: "USD".into(),
            transfer_out_per_gb: 0.09,
            classes,
        }
    }

    /// The table with `overrides` applied: each class it names replaces
    /// the table's, the others stay.
    pub fn merge(mut self, overrides: PriceOverrides) -> Prices {
        if let Some(s) = overrides.source {
            self.source = s;
        }
        if let Some(c) = overrides.currency {
            self.currency = c;
        }
        if let Some(t) = overrides.transfer_out_per_gb {
            self.transfer_out_per_gb = t;
        }
        for (name, prices) in overrides.classes {
            self.classes.insert(name.to_ascii_uppercase(), prices);
        }
        self
    }

    /// The prices of `class` (`None`: the store's default, STANDARD). A
    /// class the table lacks is priced as STANDARD, and said so by
    /// [`Prices::knows`].
    pub fn class(&self, class: Option<&str>) -> Option<&ClassPrices> {
        let name = class.unwrap_or("STANDARD").to_ascii_uppercase();
        self.classes.get(&name).or_else(|| self.classes.get("STANDARD"))
    }

    pub fn knows(&self, class: &str) -> bool {
        self.classes.contains_key(&class.to_ascii_uppercase())
    }
}

/// Objects of one storage class, as the repository holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassUsage {
    pub objects: u64,
    pub bytes: u64,
    /// What is billed as this class's storage: every object at least the
    /// class's minimum size, plus its per-object overhead.
    pub billable_bytes: u64,
    /// Overhead billed at STANDARD's rate (archive classes).
    pub standard_overhead_bytes: u64,
    /// Objects the monitoring fee applies to (Intelligent-Tiering).
    pub monitored_objects: u64,
}

impl ClassUsage {
    /// Adds one object of `size` bytes.
    pub fn add(&mut self, size: u64, prices: &ClassPrices) {
        self.objects += 1;
        self.bytes += size;
        self.billable_bytes += size.max(prices.min_object_bytes) + prices.overhead_bytes;
        self.standard_overhead_bytes += prices.overhead_standard_bytes;
        if prices.monitoring_per_1000_objects_month > 0.0 && size >= 128 << 10 {
            self.monitored_objects += 1;
        }
    }

    /// The monthly bill for keeping these objects.
    pub fn monthly(&self, prices: &ClassPrices, table: &Prices) -> f64 {
        let standard = table.class(None).map_or(0.0, |s| s.storage_per_gb_month);
        self.billable_bytes as f64 / GB * prices.storage_per_gb_month
            + self.standard_overhead_bytes as f64 / GB * standard
            + self.monitored_objects as f64 / 1000.0 * prices.monitoring_per_1000_objects_month
    }

    /// What uploading them cost (one PUT each).
    pub fn upload(&self, prices: &ClassPrices) -> f64 {
        self.objects as f64 / 1000.0 * prices.put_per_1000
    }
}

/// What reading `objects` objects of `bytes` bytes back from one class
/// costs: restore requests and retrieval (archive classes, at `tier`), the
/// restored copies kept for `days` days at STANDARD's rate, the GETs, and
/// the transfer out of the store. `None` when the class has no such tier
/// (Deep Archive has no expedited retrieval).
pub fn read_back(
    table: &Prices,
    class: Option<&str>,
    tier: Option<RetrievalTier>,
    days: u32,
    objects: u64,
    bytes: u64,
) -> Option<f64> {
    let prices = table.class(class)?;
    let gb = bytes as f64 / GB;
    let mut cost = objects as f64 / 1000.0 * prices.get_per_1000 + gb * table.transfer_out_per_gb;
    if class.is_some_and(is_archive_class) {
        let tier = prices.restore.get(&tier?)?;
        let standard = table.class(None).map_or(0.0, |s| s.storage_per_gb_month);
        cost += gb * tier.per_gb + objects as f64 / 1000.0 * tier.per_1000 + gb * standard * f64::from(days) / 30.0;
    } else {
        cost += gb * prices.read_per_gb;
    }
    Some(cost)
}

/// The bill of one storage class.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassBill {
    pub class: String,
    /// Whether the table has prices for it (if not, STANDARD's are used).
    pub priced: bool,
    #[serde(flatten)]
    pub usage: ClassUsage,
    /// A month of storage.
    pub monthly: f64,
    /// What uploading every object once costs.
    pub upload: f64,
    /// What reading every object back costs (download included): keyed
    /// `read` for a class that is read at once, by retrieval tier for an
    /// archive class.
    pub read_back: BTreeMap<String, f64>,
}

/// What a set of objects costs, class by class.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bill {
    pub source: String,
    pub currency: String,
    pub objects: u64,
    pub bytes: u64,
    pub monthly: f64,
    /// Days a restored copy is assumed kept, in the read-back figures.
    pub restore_days: u32,
    pub classes: Vec<ClassBill>,
}

/// The bill for `objects` (storage class, size), priced by `table`.
pub fn bill(objects: impl IntoIterator<Item = (String, u64)>, table: &Prices, restore_days: u32) -> Bill {
    let mut by_class: BTreeMap<String, ClassUsage> = BTreeMap::new();
    for (class, size) in objects {
        let class = class.to_ascii_uppercase();
        if let Some(prices) = table.class(Some(&class)) {
            by_class.entry(class).or_default().add(size, prices);
        }
    }
    let mut out = Bill {
        source: table.source.clone(),
        currency: table.currency.clone(),
        objects: 0,
        bytes: 0,
        monthly: 0.0,
        restore_days,
        classes: Vec::new(),
    };
    for (class, usage) in by_class {
        let Some(prices) = table.class(Some(&class)) else { continue };
        let mut read = BTreeMap::new();
        if is_archive_class(&class) {
            for tier in RetrievalTier::ALL {
                if let Some(c) = read_back(table, Some(&class), Some(tier), restore_days, usage.objects, usage.bytes) {
                    read.insert(tier.name().to_string(), c);
                }
            }
        } else if let Some(c) = read_back(table, Some(&class), None, restore_days, usage.objects, usage.bytes) {
            read.insert("read".to_string(), c);
        }
        let monthly = usage.monthly(prices, table);
        out.objects += usage.objects;
        out.bytes += usage.bytes;
        out.monthly += monthly;
        out.classes.push(ClassBill {
            priced: table.knows(&class),
            monthly,
            upload: usage.upload(prices),
            read_back: read,
            usage,
            class,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_archive_bills_minimum_overhead_and_tiers() {
        let table = Prices::aws();
        let deep = table.class(Some("deep_archive")).unwrap();
        let mut usage = ClassUsage::default();
        // 1,000 packs of 32 MiB: 31.25 GiB.
        for _ in 0..1000 {
            usage.add(32 << 20, deep);
        }
        assert_eq!(usage.billable_bytes, 1000 * ((32 << 20) + (32 << 10)));
        let monthly = usage.monthly(deep, &table);
        // 31.28 GB at $0.00099 plus 7.8 MiB at STANDARD: about 3.1 cents.
        assert!((0.030..0.032).contains(&monthly), "{monthly}");
        assert!((usage.upload(deep) - 0.05).abs() < 1e-9);
        let bulk = read_back(&table, Some("DEEP_ARCHIVE"), Some(RetrievalTier::Bulk), 7, 1000, 1000 * (32 << 20));
        let standard =
            read_back(&table, Some("DEEP_ARCHIVE"), Some(RetrievalTier::Standard), 7, 1000, 1000 * (32 << 20));
        assert!(bulk.unwrap() < standard.unwrap());
        assert_eq!(read_back(&table, Some("DEEP_ARCHIVE"), Some(RetrievalTier::Expedited), 7, 1, 1), None);
        // 31.25 GB out at $0.09 ($2.8125), bulk retrieval at $0.0025 ($0.078),
        // 1,000 requests at $0.025 per 1,000, the copies 7 days at STANDARD's
        // $0.023 ($0.168) and 1,000 GETs ($0.0004): $3.084.
        assert!((3.08..3.09).contains(&bulk.unwrap()), "{bulk:?}");
    }

    #[test]
    fn small_objects_are_billed_at_the_minimum_and_overrides_replace_classes() {
        let table = Prices::aws();
        let ia = table.class(Some("STANDARD_IA")).unwrap();
        let mut usage = ClassUsage::default();
        usage.add(1000, ia);
        assert_eq!(usage.billable_bytes, 128 << 10);
        assert!(!table.knows("NEARLINE"));
        assert_eq!(table.class(Some("NEARLINE")), table.class(None), "an unknown class is priced as STANDARD");
        let cheaper = ClassPrices { storage_per_gb_month: 0.006, ..table.class(None).unwrap().clone() };
        let merged = table.clone().merge(PriceOverrides {
            currency: Some("EUR".into()),
            classes: BTreeMap::from([("standard".into(), cheaper.clone())]),
            ..Default::default()
        });
        assert_eq!(merged.currency, "EUR");
        assert_eq!(merged.class(None), Some(&cheaper));
        assert_eq!(merged.class(Some("GLACIER")), table.class(Some("GLACIER")));
    }
}
