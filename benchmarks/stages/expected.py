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
    # two loss steps; m_5 spikes to 0.45 and falls back as F jitters up; F peaks ~1.09, sinks ~10% by the end
    "dirichlet6": [("escape", 67), ("condensation", 67), ("focus_onset", 5500), ("escape", 5700), ("focus_peak", 6000),
                   ("dilution", 6500), ("focus_peak", 25000), ("dilution", 70000)],
    # small first step, then one sharp drop to the entropy rate; F jumps to ~1 with a few-percent overshoot and stays
    "shift5": [("escape", 100), ("condensation", 100), ("focus_onset", 35000), ("escape", 36000),
               ("focus_peak", 38000)],
    # only a ~0.004-nat step onto the unigram line (sigma_1 condenses); F and masses flat throughout
    "near_uniform6": [("escape", 370), ("condensation", 370)],
    # loss staircase; m_0 overshoots, F bumps at ~500, m_1 rises/falls back, m_0 sinks 0.63->0.30, F climbs, levels
    "long_tail12": [("escape", 27), ("condensation", 27), ("focus_onset", 60), ("escape", 67), ("focus_peak", 75),
                    ("dilution", 100), ("focus_peak", 510), ("escape", 520), ("dilution", 580), ("focus_peak", 620),
                    ("dilution", 1200), ("escape", 1300), ("focus_peak", 2000), ("escape", 2100), ("escape", 3100),
                    ("dilution", 9000), ("focus_peak", 70000)],
    # one loss step; F (axis max 0.015) rises to 0.016 at ~6e3 and levels off, no visible second loss step
    "lam005": [("escape", 39), ("condensation", 39), ("focus_onset", 5500), ("focus_peak", 10000)],
    # two big steps, a small one onto the entropy rate; m_2 spikes and falls back (F flat); F steps up, levels
    "lam097": [("escape", 29), ("condensation", 29), ("focus_onset", 420), ("escape", 450), ("focus_peak", 520),
               ("dilution", 640), ("escape", 5300), ("focus_peak", 6500)],
    # a big step then a kinked descent (two merged steps); attention never moves (F = 0, masses flat)
    "two_heads_value": [("escape", 22), ("condensation", 22), ("escape", 60), ("escape", 90)],
    # loss staircase; space-key mass spikes and falls back as F jumps; F peaks twice at 1.30, dips ~10%, rises again
    "text12": [("escape", 63), ("condensation", 63), ("focus_onset", 450), ("escape", 590), ("focus_peak", 1200),
               ("dilution", 1400), ("escape", 1600), ("escape", 2600), ("escape", 5700), ("focus_peak", 10500),
               ("dilution", 17500), ("escape", 22000), ("focus_peak", 24000), ("dilution", 29000)],
}
