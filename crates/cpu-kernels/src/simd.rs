//! Runtime selection of instruction sets for loops written as plain Rust: the body is compiled
//! once per target-feature set and the widest one the CPU has is picked at run time, so a
//! binary built for generic x86-64 still uses AVX-512 or AVX2 where present.

/// Defines `fn $name($args) -> $ret` that calls `$body` (an `#[inline(always)]` function)
/// inside a clone compiled with AVX-512, AVX2+FMA or the baseline, chosen once per call by CPU
/// feature detection (cached by std).
///
/// With `$body::<Madd>`, the body is generic over [`MulAdd`] and gets [`Fused`] in the clones
/// that have FMA and [`Separate`] in the baseline: Rust never contracts `a * b + c` into an
/// FMA by itself, which left the attention loops at half their throughput.
macro_rules! dispatch {
    (fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident::<Madd>) => {
        $crate::simd::dispatch!(@clones $name($($arg: $ty),*) $(-> $ret)?,
            $body::<$crate::simd::Fused>, $body::<$crate::simd::Separate>);
    };
    (fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $crate::simd::dispatch!(@clones $name($($arg: $ty),*) $(-> $ret)?, $body, $body);
    };
    (@clones $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)?, $fused:path, $plain:path) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { $fused($($arg),*) }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $fused($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features this clone was compiled for are present.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $plain($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `a * b + c`, as one fused instruction where the clone has FMA ([`Fused`]) or as a multiply
/// and an add ([`Separate`], for the baseline target, where `mul_add` would call libm).
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// [`MulAdd`] by `f32::mul_add`: one rounding, one instruction under `fma`.
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// [`MulAdd`] as a multiply then an add.
pub(crate) struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x` in f32 by range reduction to `[-ln2/2, ln2/2]` and a degree-6 Taylor polynomial
/// (relative error below 2e-7); written with plain arithmetic so loops over it vectorise.
/// Inputs below -87.3 (including `-inf`, a masked score) give exactly 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let n = (clamped * LOG2E + 0.5).floor();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std_to_a_few_ulps_and_underflows_to_zero() {
        let mut worst = 0.0f64;
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(-200.0), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
    }
}
