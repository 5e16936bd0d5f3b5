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

/// `e^x` in f32 by range reduction to `[-ln2/2, ln2/2]` and a degree-6 Taylor polynomial in
/// `M`'s multiply-adds (relative error below 2e-7); plain arithmetic, so loops over it
/// vectorise. Inputs below -87.3 (including `-inf`, a masked score) give exactly 0.
///
/// No float-to-int cast: Rust's saturating `as i32` does not vectorise (it became a scalar
/// convert and a saturation check per lane). Adding `1.5 * 2^23` rounds
/// `x log2(e)` to an integer `n` held in the low mantissa bits, and shifting those bits into
/// the exponent field builds `2^n` directly.
#[inline(always)]
pub(crate) fn exp_with<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = M::mul_add(clamped, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, clamped));
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = M::mul_add(p, r, c);
    }
    // The low bits of `shifted` are `0x40_0000 + n`; `+ 127` and the shift leave `n + 127`
    // (in 1..=254 after the clamp) in the exponent field.
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
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
            let got = super::exp_with::<super::Separate>(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::exp_with::<super::Separate>(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_with::<super::Separate>(-200.0), 0.0);
        assert_eq!(super::exp_with::<super::Separate>(0.0), 1.0);
    }

    #[test]
    fn fused_exp_matches_std_to_a_few_ulps() {
        let mut worst = 0.0f64;
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            let got = super::exp_with::<super::Fused>(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::exp_with::<super::Fused>(f32::NEG_INFINITY), 0.0);
    }
}
