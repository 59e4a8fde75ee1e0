package steptime

import (
	"math"
	"testing"
)

var (
	nan    = math.NaN()
	inf    = math.Inf(1)
	negZ   = math.Copysign(0, -1)
	posZ   = 0.0
	negInf = math.Inf(-1)
)

// sameFloat reports whether a and b are the same float64: equal bits, or both NaN.
func sameFloat(a, b float64) bool {
	return math.Float64bits(a) == math.Float64bits(b) || (math.IsNaN(a) && math.IsNaN(b))
}

func TestMinimumMaximumFollowNumpy(t *testing.T) {
	// Expected values are numpy 2.x's np.minimum / np.maximum on float64 arrays.
	tests := []struct {
		a, b, min, max float64
	}{
		{1, 2, 1, 2},
		{2, 1, 1, 2},
		{-1, inf, -1, inf},
		{negInf, 3, negInf, 3},
		{nan, 1, nan, nan},
		{1, nan, nan, nan},
		{nan, nan, nan, nan},
		{nan, inf, nan, nan},
		{posZ, negZ, negZ, negZ}, // ties return b
		{negZ, posZ, posZ, posZ},
		{posZ, posZ, posZ, posZ},
		{negZ, negZ, negZ, negZ},
	}
	for _, tt := range tests {
		if got := minimum(tt.a, tt.b); !sameFloat(got, tt.min) {
			t.Errorf("minimum(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.min)
		}
		if got := maximum(tt.a, tt.b); !sameFloat(got, tt.max) {
			t.Errorf("maximum(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.max)
		}
	}
}

func TestWhereAndSquare(t *testing.T) {
	if got := where(true, 1, nan); got != 1 {
		t.Errorf("where(true, 1, NaN) = %v: a NaN in the branch not taken must not matter", got)
	}
	if got := where(false, nan, 2); got != 2 {
		t.Errorf("where(false, NaN, 2) = %v", got)
	}
	if got := where(nan > 0, 1, 2); got != 2 {
		t.Errorf("where(NaN > 0, 1, 2) = %v: comparisons with NaN are false", got)
	}
	for _, x := range []float64{3, -3, 1e200, 1e-200, negZ, inf, negInf, nan, 0.1} {
		if got, want := square(x), x*x; !sameFloat(got, want) {
			t.Errorf("square(%v) = %v, want %v", x, got, want)
		}
	}
}

func TestRegistry(t *testing.T) {
	saved := formulas
	t.Cleanup(func() { formulas = saved })
	formulas = map[string]Formula{}

	register(Formula{Target: "period_us", Predict: blackbox})
	register(Formula{Target: "duration_us", Predict: blackbox, Operations: 5})
	if f, ok := LookupFormula("duration_us"); !ok || f.Operations != 5 {
		t.Errorf("LookupFormula(duration_us) = %+v, %v", f, ok)
	}
	if _, ok := LookupFormula("latency_us"); ok {
		t.Error("LookupFormula found an unregistered target")
	}
	all := Formulas()
	if len(all) != 2 || all[0].Target != "duration_us" || all[1].Target != "period_us" {
		t.Errorf("Formulas() = %+v, want duration_us then period_us", all)
	}
	for _, bad := range []Formula{
		{Target: "duration_us", Predict: blackbox}, // duplicate
		{Target: "", Predict: blackbox},
		{Target: "x_us"},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("register(%+v) did not panic", bad)
				}
			}()
			register(bad)
		}()
	}
}
