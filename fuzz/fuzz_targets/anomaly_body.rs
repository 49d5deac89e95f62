//! `POST /anomaly` bodies: any bytes are a 400 with a reason or an anomaly, never a panic; an
//! accepted anomaly has a valid name, and details that are one JSON object on one line (what a
//! log record and an exec child's `AUTOHEALER_DETAILS` carry).
#![no_main]

use autohealer::anomaly::{validate_name, Anomaly, JsonObject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(anomaly) = Anomaly::from_json(body) else {
        return;
    };
    assert!(validate_name(&anomaly.name).is_ok(), "{:?}", anomaly.name);
    let json = anomaly.details.as_json();
    assert!(
        !json.contains(['\n', '\r']),
        "details on more than one line: {json:?}"
    );
    let reparsed: JsonObject = serde_json::from_str(json).expect("details are a JSON object");
    // The same keys: a template sees what the records show. (Not the same values: serde_json
    // may read a long number back one ulp apart, which is JSON's nature, not a loss.)
    let keys = |object: &JsonObject| object.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&reparsed), keys(anomaly.details.object()));
});
