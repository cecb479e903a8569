"""Events a person sees in each undecorated overview figure of the gallery (figures/<name>_bare.png),
written down before the detector ran on that setting: (kind, time read off the log-time axis).

Reading rules: an escape is a visible step of the loss curve; condensation is the first step, while
the attention panels are flat; the focus onset is where the focus index leaves zero; a focus peak
is a maximum of the focus index (or of a key token's attention mass) from which it visibly falls
back, the dilution that fall; a focus that rises and levels off is a (final) focus peak where it
levels off. Wiggles of a few percent are not written down.
"""

EXPECTED: dict[str, list[tuple[str, float]]] = {
    "demo": [("escape", 13), ("condensation", 13), ("focus_onset", 233), ("escape", 250), ("escape", 480),
             ("focus_peak", 940), ("escape", 990), ("dilution", 1020), ("escape", 5000), ("focus_peak", 5000)],
    "zipf5": [("escape", 35), ("condensation", 35), ("focus_onset", 360), ("escape", 380), ("focus_peak", 900),
              ("dilution", 950), ("escape", 1000), ("focus_peak", 1500), ("escape", 1550), ("dilution", 2100),
              ("escape", 2300)],
    "zipf8": [("escape", 40), ("condensation", 40), ("focus_onset", 170), ("escape", 180), ("focus_peak", 950),
              ("escape", 1000), ("dilution", 1100), ("focus_peak", 1900), ("escape", 2000), ("dilution", 2600),
              ("escape", 2800), ("escape", 4000), ("escape", 20000), ("focus_peak", 20000)],
    "near_uniform": [("escape", 250), ("condensation", 250)],
    "two_equal_top": [("escape", 35), ("condensation", 35), ("focus_onset", 1750), ("escape", 1800),
                      ("escape", 2500), ("escape", 3000), ("focus_peak", 3100), ("dilution", 3200),
                      ("escape", 3600), ("focus_peak", 3700)],
    "lam01": [("escape", 13), ("condensation", 13), ("focus_onset", 1100), ("focus_peak", 5000),
              ("dilution", 12000)],
    "lam09": [("escape", 13), ("condensation", 13), ("focus_onset", 140), ("escape", 150), ("escape", 230),
              ("focus_peak", 330), ("dilution", 600), ("escape", 900), ("escape", 10000), ("focus_peak", 10000),
              ("dilution", 12000)],
    "d4": [("escape", 14), ("condensation", 14), ("focus_onset", 190), ("escape", 220), ("escape", 450),
           ("focus_peak", 850), ("escape", 900), ("dilution", 1000), ("escape", 5500), ("focus_peak", 6000)],
    "d16": [("escape", 13), ("condensation", 13), ("focus_onset", 320), ("escape", 330), ("escape", 600),
            ("focus_peak", 1100), ("escape", 1100), ("dilution", 1200), ("escape", 4500), ("focus_peak", 5000)],
    "scale1e-2": [("escape", 9), ("condensation", 9), ("focus_onset", 150), ("escape", 170), ("escape", 320),
                  ("focus_peak", 780), ("escape", 800), ("dilution", 850), ("escape", 4000), ("focus_peak", 4500)],
    "scale1e-5": [("escape", 22), ("condensation", 22), ("focus_onset", 400), ("escape", 420), ("escape", 900),
                  ("focus_peak", 1400), ("escape", 1400), ("dilution", 1700), ("escape", 8000), ("focus_peak", 9000)],
    "counts_T8": [("escape", 13), ("condensation", 13), ("focus_onset", 400), ("escape", 400), ("focus_peak", 410),
                  ("dilution", 450), ("escape", 900), ("escape", 1300), ("escape", 4000)],
    "value_residual": [("escape", 11), ("condensation", 11), ("escape", 80), ("escape", 500)],
    "two_heads": [("escape", 6), ("condensation", 6), ("focus_onset", 720), ("escape", 750), ("focus_peak", 1600),
                  ("escape", 1600), ("dilution", 1900), ("focus_peak", 2500), ("escape", 2600), ("dilution", 3000)],
    "positions": [("escape", 11), ("condensation", 11), ("escape", 170), ("focus_onset", 480), ("escape", 480),
                  ("escape", 1000), ("focus_peak", 1500)],
    "other_seed": [("escape", 27), ("condensation", 27), ("focus_onset", 580), ("escape", 600), ("focus_peak", 1000),
                   ("dilution", 1500), ("focus_peak", 1800), ("escape", 1900), ("dilution", 3500),
                   ("escape", 7000), ("focus_peak", 7000)],
}
