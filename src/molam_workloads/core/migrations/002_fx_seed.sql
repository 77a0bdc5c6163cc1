-- Indicative FX rates (USD quote) so a fresh install converts the common currencies of the
-- region; `molam-analytics fx load FILE` replaces or extends them with real dated rates.
INSERT INTO fx_rates (day, currency, quote, rate) VALUES
    ('2024-01-01', 'USD', 'USD', 1),
    ('2024-01-01', 'XOF', 'USD', 0.00165),
    ('2024-01-01', 'XAF', 'USD', 0.00165),
    ('2024-01-01', 'EUR', 'USD', 1.08),
    ('2024-01-01', 'GBP', 'USD', 1.27),
    ('2024-01-01', 'NGN', 'USD', 0.00065),
    ('2024-01-01', 'GHS', 'USD', 0.083),
    ('2024-01-01', 'KES', 'USD', 0.0077),
    ('2024-01-01', 'MAD', 'USD', 0.10),
    ('2024-01-01', 'ZAR', 'USD', 0.054),
    ('2024-01-01', 'GNF', 'USD', 0.000116)
ON CONFLICT DO NOTHING;
