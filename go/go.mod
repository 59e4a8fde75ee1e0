module stepformula/go/steptime

go 1.22
