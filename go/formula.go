package steptime

import (
	"fmt"
	"sort"
)

// Formula is a generated step-time formula and the program it was translated from.
//
// Predict takes the features by value: a formula is called through this func value, and a
// pointer argument of an indirect call escapes, which would cost StepTime one heap allocation
// per step.
type Formula struct {
	Target        string                   // what it predicts: "duration_us" or "period_us"
	Predict       func(f Features) float64 // time of one step in µs; may be NaN or ±Inf
	Program       string                   // path of the selected program in the study
	ProgramSHA256 string                   // hex SHA-256 of the program's text
	TestMAPE      float64                  // mean absolute percentage error on the test split, as a fraction
	Operations    int                      // operation count of the program
}

// formulas holds the generated formulas by target. Generated files fill it from their init
// functions, which run before any other code of the package can read it.
var formulas = map[string]Formula{}

// register adds a generated formula. Two formulas for one target are a build mistake (two
// generated files claim the same target), so it panics rather than let one silently win.
func register(f Formula) {
	if f.Target == "" || f.Predict == nil {
		panic(fmt.Sprintf("steptime: incomplete formula %+v", f))
	}
	if _, dup := formulas[f.Target]; dup {
		panic("steptime: two generated formulas for target " + f.Target)
	}
	formulas[f.Target] = f
}

// LookupFormula returns the generated formula for a target, such as "duration_us".
func LookupFormula(target string) (Formula, bool) {
	f, ok := formulas[target]
	return f, ok
}

// Formulas returns every generated formula, sorted by target.
func Formulas() []Formula {
	all := make([]Formula, 0, len(formulas))
	for _, f := range formulas {
		all = append(all, f)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Target < all[j].Target })
	return all
}

// The helpers below give generated formulas numpy's semantics where Go's own operators or the
// math package differ. Each is small enough to be inlined.

// where is np.where for one element: both branches are evaluated, as numpy evaluates both
// arrays, and the condition picks one.
func where(cond bool, a, b float64) float64 {
	if cond {
		return a
	}
	return b
}

// minimum is np.minimum: NaN if either argument is NaN, otherwise the smaller. When neither is
// smaller (+0 and -0) it returns b, as numpy does. math.Min differs: it returns -0 for any
// mix of zeros.
func minimum(a, b float64) float64 {
	if a < b || a != a {
		return a
	}
	return b
}

// maximum is np.maximum: NaN if either argument is NaN, otherwise the larger. When neither is
// larger (+0 and -0) it returns b, as numpy does. math.Max differs: it returns +0 for any mix
// of zeros.
func maximum(a, b float64) float64 {
	if a > b || a != a {
		return a
	}
	return b
}

// square is x**2 as numpy computes it for a float array: one rounded product x*x (numpy
// special-cases the exponent 2 instead of calling pow). The conversion keeps the product
// rounded, so Go cannot fuse it into an FMA with a following addition.
func square(x float64) float64 {
	return float64(x * x)
}
